"""Profiling a ViT space: measure a sub-grid of sizes, interpolate to every option, build the tables.

Measured points go into the shared LUT of ``latency/lut.py`` (``profile_into_lut``: one CSV per device,
dtype, batch and threads under ``luts/``, the same files as the CNN rows; sizes as
``embed=192;heads=3;qk=64;v=8``; a row already there is reused, by any model with the same op signature).
``rows_from_lut`` reads them back for ``vit_tables``. The older stand-alone format (``save_lut`` /
``load_lut``: ``op, signature, embed, heads, qk, v, hidden, ms`` + an ``mdp.vit_lut`` sidecar) is kept for
the scripts. One table set serves every block, because all blocks of a timm ViT share the same term
signatures (same context: tokens, batch, dtype).

Tables (full option grids) come from multilinear interpolation over the measured sub-grid. The
attention branch T(E, H, Q, V) is timed whole (the SDPA kernel fuses QKᵀ, softmax and attn·V): at
(E, H, Q, v_ref) for ``vit_qk`` and at (E, H, qk_ref, V) for ``vit_vproj``. ``vit_sdpa`` times the part
between its two linears alone, S(H, Q, V), on every Q and V option (up to ``FULL_AXIS_MAX`` options per
axis; a sub-grid beyond): its cost follows max(Q, V) (the exporter pads the narrower side so the fused
kernel runs) and the kernel's tiling, which neither an additive split nor a coarse sub-grid follows.
P = T − S (LayerNorm, the projections, the residual add) is additive in Q and V for given (E, H). S is
subtracted from every qk/vproj row at its own sizes before interpolation, and with
R(E, H) = P(E, H, qk_ref, v_ref):

    qk(E, H, Q)    = P(E, H, Q, v_ref)  − R(E, H) / 2
    vproj(E, H, V) = P(E, H, qk_ref, V) − R(E, H) / 2
    sdpa(H, Q, V)  = S(H, Q, V)

so qk + vproj + sdpa = P(E,H,Q,v_ref) + P(E,H,qk_ref,V) − R(E,H) + S(H,Q,V): exact at either reference
and everywhere when P is additive in Q and V, whatever the kernel does.
``scripts/bench_latency_model_vit.py`` checks it against whole exported models.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

import mdp_cli.latency.vit_ops  # noqa: F401  (registers the ViT ops)
from mdp_cli.artifacts import atomic_path, provenance, read_json, write_json
from mdp_cli.errors import MdpError
from mdp_cli.latency.ops import get_op
from mdp_cli.space.core import PruningSpace, SpaceTerm

LUT_SCHEMA = "mdp.vit_lut"  # stand-alone sub-grid rows (scripts); the pipeline uses latency/lut.py
LUT_VERSION = 1
SIZE_COLUMNS = ("embed", "heads", "qk", "v", "hidden")
DEFAULT_GRID = {"embed": 5, "heads": 4, "qk": 3, "v": 3, "hidden": 5}
FULL_AXES = {"vit_sdpa": ("qk", "v")}  # roles measured at every option (kernel tiling, max(Q, V)), not a sub-grid
FULL_AXIS_MAX = 16  # beyond this many options a "full" axis falls back to a sub-grid of this many points
UNCHAINED = ("vit_stem", "vit_head", "vit_sdpa")  # once per model, or weight-free: timed alone


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


def clock_name(device: str) -> str:
    """``thread_cpu`` on CPU with one intra-op thread (the op runs in the calling thread, so its CPU time
    is its latency minus the time the OS gave the core to other processes: robust on a shared machine,
    the same choice as latency/timing.py), ``wall`` with more threads, ``cuda_sync`` on GPU."""
    if device.startswith("cuda"):
        return "cuda_event"
    return "thread_cpu" if torch.get_num_threads() == 1 else "wall"


def _clock(device: str):
    return time.thread_time if clock_name(device) == "thread_cpu" else time.perf_counter


def _call_ms(module: torch.nn.Module, x: torch.Tensor, device: str, clock) -> float:
    """One timed call in ms: CUDA events on GPU (as latency/timing.py), else ``clock``."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        module(x)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = clock()
    module(x)
    return 1000.0 * (clock() - t0)


def measure_ms(module: torch.nn.Module, x: torch.Tensor, warmup: int = 10, samples: int = 30,
               device: str = "cpu") -> float:
    """Median time (ms) of ``module(x)`` over ``samples`` back-to-back calls after ``warmup`` calls."""
    return statistics.median(_sample_ms(module, x, warmup, samples, device))


def measure_against(module: torch.nn.Module, x: torch.Tensor, ref: torch.nn.Module | None, x_ref: torch.Tensor | None,
                    warmup: int = 10, samples: int = 30, device: str = "cpu", per_turn: int = 5,
                    settle: int = 2) -> tuple[float, float | None]:
    """Median times (ms) of ``module(x)`` and, taking turns with it, of a reference ``ref(x_ref)``
    (``sample_against``'s samples, reduced to medians)."""
    times, ref_times = sample_against(module, x, ref, x_ref, warmup, samples, device, per_turn, settle)
    return statistics.median(times), (statistics.median(ref_times) if ref_times else None)


def sample_against(module: torch.nn.Module, x: torch.Tensor, ref: torch.nn.Module | None, x_ref: torch.Tensor | None,
                   warmup: int = 10, samples: int = 30, device: str = "cpu", per_turn: int = 5,
                   settle: int = 2) -> tuple[list[float], list[float]]:
    """Times (ms) of ``samples`` calls of ``module(x)`` and as many of ``ref(x_ref)``, taking turns.

    On a shared machine absolute times drift by 10-40 % over minutes while the ratio of two models
    timed in turns stays within a few percent (measured: ±6 % under a load of 3 on 2 cores, against
    ±40 % for separately timed medians). Each turn is ``settle`` untimed calls and then ``per_turn``
    timed ones, so that a timed call follows a call of the same model, as it does when deployed, and
    not the other model's pass through the caches (no difference measured on deit_small at 224 px:
    one call per turn and five per turn agree within the run-to-run noise).
    """
    module = module.to(device).eval()
    x = x.to(device)
    if ref is not None:
        ref = ref.to(device).eval()
        x_ref = x_ref.to(device)
    cuda = device.startswith("cuda")
    clock = _clock(device)
    per_turn = max(1, int(per_turn))

    def turn(m, inp, n, out):
        for _ in range(settle):
            m(inp)
        if cuda:
            torch.cuda.synchronize()
        for _ in range(n):
            out.append(_call_ms(m, inp, device, clock))

    times, ref_times = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
            if ref is not None:
                ref(x_ref)
        while len(times) < samples:
            n = min(per_turn, samples - len(times))
            turn(module, x, n, times)
            if ref is not None:
                turn(ref, x_ref, n, ref_times)
    return times, ref_times


def subgrid(options: Iterable[int], n: int) -> list[int]:
    """``n`` options spread evenly over the list, always including the smallest and the full size."""
    options = list(options)
    if n >= len(options):
        return options
    idx = sorted({round(i * (len(options) - 1) / max(n - 1, 1)) for i in range(n)})
    return [options[i] for i in idx]


# ---------------------------------------------------------------------------------------------------
# Profiling
# ---------------------------------------------------------------------------------------------------


def _unique_terms(space: PruningSpace) -> dict[str, SpaceTerm]:
    out: dict[str, SpaceTerm] = {}
    for term in space.terms:
        out.setdefault(term.signature(), term)
    return out


def _points(space: PruningSpace, term: SpaceTerm, grid: Mapping[str, int]) -> list[dict[str, int]]:
    full = FULL_AXES.get(term.op, ())
    axes = [subgrid(space.dim(d).options, FULL_AXIS_MAX) if role in full else subgrid(space.dim(d).options, int(grid.get(role, 4)))
            for d, role in zip(term.dims, term.roles)]
    mesh = np.meshgrid(*axes, indexing="ij") if axes else []
    if not axes:
        return [{}]
    return [dict(zip(term.roles, map(int, values))) for values in zip(*(m.ravel() for m in mesh))]


def profile_vit(
    space: PruningSpace,
    device: str = "cpu",
    grid: Mapping[str, int] | None = None,
    warmup: int = 10,
    samples: int = 30,
    threads: int | None = 1,
    replicas: int | None = None,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
    have: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Measure every distinct term of the space on a sub-grid of its sizes; returns a LUT dict
    ``{"rows": [...], "provenance": {...}}`` (save with ``save_lut``).

    A block op is timed as a chain of distinct copies (as many as blocks share its signature, at most
    ``replicas``) and divided by their count: a single module re-run on its own keeps its weights in
    cache and reads 25-40 % faster than the same op inside the whole model (measured on deit_tiny, CPU).
    The ``samples`` of each configuration are taken in ``rounds`` passes over all configurations (each
    after ``warmup`` calls) and the median is over all of them, so a slow drift of the machine's load
    during profiling spreads over every row instead of biasing the rows timed at the wrong moment.
    ``have(row)`` true: the row exists already (in a shared LUT) and is neither measured nor returned.
    Each row holds ``ms`` (median) and ``samples`` (all its times).
    """
    grid = {**DEFAULT_GRID, **(grid or {})}
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    copies: dict[str, int] = {}
    for term in space.terms:
        if term.op not in UNCHAINED:
            copies[term.signature()] = copies.get(term.signature(), 0) + 1
    configs: dict[tuple, tuple[SpaceTerm, dict[str, int], int]] = {}
    row_keys: list[tuple[dict[str, Any], tuple]] = []
    batch = 1
    for sig, term in _unique_terms(space).items():
        batch = term.context.get("batch", 1)
        n = copies.get(sig, 1) if replicas is None else max(1, min(int(replicas), copies.get(sig, 1)))
        for sizes in _points(space, term, grid):
            sizes_all = dict(sizes)
            if term.op == "vit_qk":
                sizes_all["v"] = term.context["v_ref"]
            elif term.op == "vit_vproj":
                sizes_all["qk"] = term.context["qk_ref"]
            # the qk and vproj sub-grids share their reference points: time each configuration once
            key = ("attn" if term.op in ("vit_qk", "vit_vproj") else term.op,
                   json.dumps(term.context, sort_keys=True), tuple(sorted(sizes_all.items())))
            row = {"op": term.op, "signature": sig, **sizes_all}
            if have is not None and have(row):
                continue
            configs.setdefault(key, (term, sizes, n))
            row_keys.append((row, key))
    rounds = max(1, int(rounds))
    per_round = -(-samples // rounds)
    times: dict[tuple, list[float]] = {key: [] for key in configs}
    for r in range(rounds):
        for key, (term, sizes, n) in configs.items():
            build = get_op(term.op)
            module, x = build(term.context, sizes, batch)
            if n > 1:  # a chain of distinct copies: weights stream from memory as in the whole model
                module = torch.nn.Sequential(module, *(build(term.context, sizes, batch)[0] for _ in range(n - 1)))
            times[key] += [t / n for t in _sample_ms(module, x, warmup, per_round, device)]
            del module, x
            if progress:
                progress(f"round {r + 1}/{rounds} {term.op} {sizes}: {statistics.median(times[key]):.3f} ms")
    rows = [{**row, "ms": statistics.median(times[key]), "samples": times[key]} for row, key in row_keys]
    seconds = time.perf_counter() - t_start
    prov = provenance(
        model=space.model_name, family=space.family, device=_device_name(device), dtype=_dtype_of(space),
        batch=batch, threads=torch.get_num_threads() if device == "cpu" else None, clock=clock_name(device), warmup=warmup,
        samples=per_round * rounds, rounds=rounds, grid=grid, replicas=replicas,
        profile_seconds=round(seconds, 2), measurements=len(configs),
    )
    return {"rows": rows, "provenance": prov}


def _sample_ms(module: torch.nn.Module, x: torch.Tensor, warmup: int, samples: int, device: str) -> list[float]:
    """``samples`` back-to-back timed calls after ``warmup`` calls (one turn, no reference)."""
    return sample_against(module, x, None, None, warmup, samples, device, per_turn=samples, settle=0)[0]


def _dtype_of(space: PruningSpace) -> str:
    return space.terms[0].context.get("dtype", "float32") if space.terms else "float32"


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device}:{torch.cuda.get_device_name(torch.device(device))}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()}"


def save_lut(path: str | Path, lut: Mapping[str, Any]) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["op", "signature", *SIZE_COLUMNS, "ms"])
            for r in lut["rows"]:
                writer.writerow([r["op"], r["signature"], *(r.get(c, "") for c in SIZE_COLUMNS), f"{r['ms']:.6g}"])
    write_json(path.with_suffix(path.suffix + ".json"), {"schema": LUT_SCHEMA, "version": LUT_VERSION,
                                                        "provenance": lut["provenance"]})


def load_lut(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MdpError(f"{path}: LUT not found; run 'mdp profile'")
    meta = read_json(path.with_suffix(path.suffix + ".json"), LUT_SCHEMA, LUT_VERSION)
    rows = []
    with open(path, newline="") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            try:
                row = {"op": r["op"], "signature": r["signature"], "ms": float(r["ms"])}
                row.update({c: int(r[c]) for c in SIZE_COLUMNS if r.get(c)})
            except (KeyError, ValueError) as exc:
                raise MdpError(f"{path}: row {i + 2}: malformed ({exc})") from None
            rows.append(row)
    return {"rows": rows, "provenance": meta.get("provenance", {})}


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


def _interpolate(axes: list[list[int]], values: np.ndarray, targets: list[tuple[int, ...]]) -> np.ndarray:
    """Multilinear interpolation of ``values`` (on the grid ``axes``) to the full ``targets`` grid."""
    out = values
    for axis, (grid, target) in enumerate(zip(axes, targets)):
        out = np.apply_along_axis(lambda col: np.interp(target, grid, col), axis, out)
    return out


def term_table(space: PruningSpace, term: SpaceTerm, rows: list[Mapping[str, Any]]) -> np.ndarray:
    """Interpolated full-option table of one term from its measured rows (raw, before the qk/vproj split)."""
    sig = term.signature()
    mine = [r for r in rows if r["signature"] == sig]
    if not term.dims:
        if not mine:
            raise MdpError(f"LUT has no row for fixed term {term.name!r}")
        return np.asarray(float(np.median([r["ms"] for r in mine])))
    axes = [sorted({int(r[role]) for r in mine}) for role in term.roles]
    if not mine:
        raise MdpError(f"LUT has no rows for term {term.name!r} (op {term.op}); re-run 'mdp profile' for this model")
    values = np.full([len(a) for a in axes], np.nan)
    for r in mine:
        values[tuple(a.index(int(r[role])) for a, role in zip(axes, term.roles))] = r["ms"]
    if np.isnan(values).any():
        raise MdpError(f"LUT rows for term {term.name!r} do not form a full sub-grid; re-run 'mdp profile'")
    targets = [space.dim(d).options for d in term.dims]
    for axis, (grid, target) in enumerate(zip(axes, targets)):
        if target[0] < grid[0] or target[-1] > grid[-1]:
            raise MdpError(f"LUT for {term.name!r} covers {space.dim(term.dims[axis]).name} {grid[0]}..{grid[-1]}, "
                           f"the space needs {target[0]}..{target[-1]}; re-profile")
    return _interpolate(axes, values, targets)


def vit_tables(space: PruningSpace, lut: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Full-option latency table (ms) of every term of the space, keyed by term name."""
    rows = _projection_rows(space, lut["rows"])
    by_sig: dict[str, np.ndarray] = {}
    for sig, term in _unique_terms(space).items():
        table = term_table(space, term, rows)
        if term.op in ("vit_qk", "vit_vproj"):
            # R(E, H) = P(E, H, qk_ref, v_ref): the first Q option of the qk slice (qk_ref = smallest option)
            qk_term = next(t for t in space.terms if t.op == "vit_qk" and t.context == term.context)
            ref = term_table(space, qk_term, rows)[:, :, 0]
            table = np.clip(table - ref[:, :, None] / 2, 0.0, None)
        by_sig[sig] = table
    return {term.name: by_sig[term.signature()] for term in space.terms}


def _projection_rows(space: PruningSpace, rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` with every qk/vproj branch time T replaced by P = T − S(H, Q, V) at its own measured sizes,
    before any interpolation: the slices T(·, Q, v_ref) and T(·, qk_ref, V) carry the kernel's max(Q, V)
    and tiling steps, P is smooth. S is measured at every Q and V (up to ``FULL_AXIS_MAX`` options) and at
    the same head counts as the slices."""
    kernel = next((t for t in space.terms if t.op == "vit_sdpa"), None)
    if kernel is None:
        raise MdpError("space has no vit_sdpa term; rebuild the space with this version of mdp")
    table = term_table(space, kernel, rows)
    opts = [list(space.dim(d).options) for d in kernel.dims]
    out = []
    for r in rows:
        if r["op"] in ("vit_qk", "vit_vproj"):
            try:
                idx = tuple(o.index(int(r[role])) for o, role in zip(opts, kernel.roles))
            except ValueError:
                raise MdpError(f"LUT row {r['op']} {lut_sizes(r)} is off the space's head/qk/v options; re-profile") from None
            r = {**r, "ms": r["ms"] - float(table[idx])}
        out.append(r)
    return out


def predict_latency(space: PruningSpace, tables: Mapping[str, np.ndarray], sizes: Mapping[str, int],
                    kept: Mapping[str, bool] | None = None) -> float:
    """Σ tables at a configuration given as kept sizes per dim (missing dims: full) and kept blocks."""
    kept = kept or {}
    total = 0.0
    for term in space.terms:
        if term.block is not None and not kept.get(term.block, True):
            continue
        idx = tuple(space.dim(d).options.index(int(sizes.get(d, space.dim(d).size))) for d in term.dims)
        total += float(tables[term.name][idx])
    return total


def linear_tables(space, tables):
    """HALP-style linear per-dim model from the same tables (for comparison). Per term: T_full − Σ_dims slope_d · (full_d − size_d), slopes from (min, full) with other dims full."""
    out = {}
    for term in space.terms:
        t = np.asarray(tables[term.name], float)
        if t.ndim == 0:
            out[term.name] = t
            continue
        full = t[(-1,) * t.ndim]
        lin = np.full(t.shape, full)
        for axis, d in enumerate(term.dims):
            opts = np.asarray(space.dim(d).options, float)
            idx = [-1] * t.ndim
            idx[axis] = 0
            slope = (full - t[tuple(idx)]) / max(opts[-1] - opts[0], 1.0)
            shape = [1] * t.ndim
            shape[axis] = -1
            lin = lin - slope * (opts[-1] - opts).reshape(shape)
        out[term.name] = np.clip(lin, 0.0, None)
    return out


# ---------------------------------------------------------------------------------------------------
# The shared LUT (latency/lut.py)
# ---------------------------------------------------------------------------------------------------


def lut_sizes(row: Mapping[str, Any]) -> str:
    """``embed=192;heads=3;qk=64;v=8``: a ViT row's sizes in the shared LUT's ``sizes`` column."""
    from mdp_cli.latency.lut import sizes_key

    roles = [c for c in SIZE_COLUMNS if c in row]
    return sizes_key(roles, [row[c] for c in roles])


def profile_into_lut(space: PruningSpace, lut, device: str = "cpu", grid: Mapping[str, int] | None = None,
                     warmup: int = 10, samples: int = 30, threads: int = 1,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the rows of ``space``'s sub-grid that ``lut`` (a ``latency.lut.Lut``) lacks, add them and save.
    Returns ``{"measured", "reused", "seconds"}`` (rows, not timed configurations)."""
    import datetime as _dt

    from mdp_cli.latency.timing import clock_for

    t0 = time.perf_counter()
    seen: list[str] = []

    def have(row: Mapping[str, Any]) -> bool:
        seen.append(row["signature"])
        return (row["signature"], lut_sizes(row)) in lut

    result = profile_vit(space, device=device, grid=grid, warmup=warmup, samples=samples, threads=threads,
                         progress=progress, have=have)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for r in result["rows"]:
        t = np.asarray(r["samples"], float)
        rows.append({"op": r["op"], "signature": r["signature"], "sizes": lut_sizes(r), "device": lut.device,
                     "dtype": lut.dtype, "batch": lut.batch, "threads": lut.threads,
                     "clock": clock_for(device, threads), "median_ms": float(np.median(t)),
                     "spread_ms": float(np.percentile(t, 75) - np.percentile(t, 25)),
                     "p10_ms": float(np.percentile(t, 10)), "ref_ms": float("nan"), "repeats": len(t),
                     "warmup": warmup, "created": now})
    lut.add_rows(rows)
    if rows or not lut.path.is_file():
        lut.save(last_model=space.model_name)
    return {"measured": len(rows), "reused": len(seen) - len(rows), "seconds": time.perf_counter() - t0}


def rows_from_lut(lut, space: PruningSpace) -> list[dict[str, Any]]:
    """The rows of ``space``'s op signatures from a shared LUT, in the form ``vit_tables`` reads (``ms`` is
    the LUT's statistic: median, or p10 when opened with ``stat="p10"``)."""
    wanted = {t.signature() for t in space.terms}
    f = lut.frame
    column = "median_ms" if lut.stat == "median" else "p10_ms"
    rows = []
    for op, sig, sizes, ms in zip(f["op"], f["signature"].astype(str), f["sizes"].astype(str), f[column]):
        if sig not in wanted:
            continue
        row: dict[str, Any] = {"op": op, "signature": sig, "ms": float(ms)}
        for part in filter(None, sizes.split(";")):
            k, v = part.split("=", 1)
            row[k] = int(v)
        rows.append(row)
    return rows
