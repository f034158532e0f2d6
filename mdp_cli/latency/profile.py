"""The profiling engine: measure every latency term of a space over its dims' options into a LUT.

Family-neutral: it only needs ``SpaceTerm`` (op name, roles, context) and the op registry. Configurations
are deduplicated by (signature, sizes) across terms and across models already in the LUT, so identical
convs (same kernel, stride, feature map) are measured once. With ``grid > 1`` only every grid-th option
of each dim (plus the first and last) is measured and the problem builder interpolates in between.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import itertools
import time
from pathlib import Path
from typing import Any

from mdp_cli.latency.lut import Lut, grid_indices, lut_filename, sizes_key
from mdp_cli.latency.ops import get_op
from mdp_cli.latency.timing import canonical_dtype, check_device, device_name, threads as use_threads, time_round_robin, reference_item, clock_for
from mdp_cli.space.core import PruningSpace

# Families register their ops on import.
_OP_MODULES = ("mdp_cli.latency.cnn_ops", "mdp_cli.latency.vit_ops")


def load_op_modules() -> None:
    for module in _OP_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            pass


ORDER = "shuffle"  # how configurations are grouped into round-robin rounds: shuffle | footprint


def _footprint(context: dict, sizes: dict) -> float:
    """Rough bytes an op touches (weights + input), to time ops among others of similar size."""
    merged = {**{k: v for k, v in context.items() if isinstance(v, int)}, **sizes}
    cin = merged.get("cin", merged.get("c", 1))
    cout = merged.get("cout", merged.get("c", 1))
    k = context.get("k", [1, 1])
    hw = context.get("hw", [1, 1])
    return cin * cout * k[0] * k[1] + cin * hw[0] * hw[1]


def configurations(space: PruningSpace, grid: int = 1) -> list[tuple[str, str, tuple[str, ...], dict, dict]]:
    """Unique (op, signature, roles, context, sizes-by-role) to measure for the space."""
    seen: dict[tuple[str, str], tuple] = {}
    for term in space.terms:
        dims = [space.dim(d) for d in term.dims]
        picks = [[dim.options[i] for i in grid_indices(len(dim.options), grid)] for dim in dims]
        signature = term.signature()
        for combo in itertools.product(*picks) if picks else [()]:
            key = (signature, sizes_key(term.roles, combo))
            if key not in seen:
                seen[key] = (term.op, signature, term.roles, term.context, dict(zip(term.roles, combo)))
    return list(seen.values())


def profile_space(
    space: PruningSpace,
    device: str = "cpu",
    dtype: str = "float32",
    batch: int = 1,
    lut_dir: str | Path = "luts",
    lut_path: str | Path | None = None,
    warmup: int = 10,
    repeats: int = 30,
    grid: int = 1,
    num_threads: int = 1,
    progress: bool = True,
    save_every_s: float = 30.0,
    chunk: int = 24,
) -> dict[str, Any]:
    """Measure what the LUT lacks for ``space``; returns a summary (path, measured, reused, seconds)."""
    import torch

    load_op_modules()
    device = check_device(device)
    dtype = canonical_dtype(dtype)
    hw = device_name(device)
    path = Path(lut_path) if lut_path else Path(lut_dir) / lut_filename(hw, dtype, batch, num_threads)
    lut = Lut.open(path, hw, dtype, batch, num_threads)
    clock = clock_for(device, num_threads)
    todo = [c for c in configurations(space, grid) if (c[1], sizes_key(c[2], [c[4][r] for r in c[2]])) not in lut]
    total = len(configurations(space, grid))
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    last_save = start
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"profile {space.model_name} on {hw}", unit="cfg", leave=False)
    torch.manual_seed(0)
    import random

    random.Random(0).shuffle(todo)
    if ORDER == "footprint":
        todo.sort(key=lambda c: _footprint(c[3], c[4]))
    with use_threads(num_threads if device == "cpu" else None):
        for start_k in range(0, len(todo), chunk):
            part = todo[start_k:start_k + chunk]
            built = [reference_item(batch)] + [get_op(op)(context, sizes, batch) for op, _sig, _roles, context, sizes in part]
            timings = time_round_robin(built, device, dtype, warmup, repeats)
            ref_ms = timings.pop(0)[0]
            for (op, signature, roles, _context, sizes), (median, spread, p10) in zip(part, timings):
                rows.append({"op": op, "signature": signature, "sizes": sizes_key(roles, [sizes[r] for r in roles]),
                             "device": hw, "dtype": dtype, "batch": batch, "threads": num_threads, "clock": clock,
                             "median_ms": median, "spread_ms": spread, "p10_ms": p10, "ref_ms": ref_ms, "repeats": repeats, "warmup": warmup,
                             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            del built
            if bar is not None:
                bar.update(len(part))
            if time.perf_counter() - last_save > save_every_s:
                lut.add_rows(rows)
                rows = []
                lut.save(last_model=space.model_name)
                last_save = time.perf_counter()
    if bar is not None:
        bar.close()
    lut.add_rows(rows)
    if todo or not path.is_file():
        lut.save(last_model=space.model_name)
    return {"lut": str(path), "measured": len(todo), "reused": total - len(todo), "configurations": total,
            "seconds": time.perf_counter() - start, "device": hw, "dtype": dtype, "batch": batch,
            "threads": num_threads}
