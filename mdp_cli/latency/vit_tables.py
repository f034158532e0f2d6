"""ViT latency tables: from the measured sub-grid rows of the shared LUT to a full-option table per term.

``latency/vit_plan.py`` says which rows to measure (the profiling engine, ``latency/engine.py``, times
them into the shared LUT of ``latency/lut.py``: sizes as ``embed=192;heads=3;qk=64;v=8``, reused by any
model with the same op signature); ``rows_from_lut`` reads them back for ``vit_tables``. One table set
serves every block, because all blocks of a timm ViT share the same term signatures (same context:
tokens, batch, dtype).

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

from typing import Any, Mapping, Sequence

import numpy as np

from mdp_cli.errors import MdpError
from mdp_cli.latency.engine import Measurement
from mdp_cli.latency.lut import sizes_key
from mdp_cli.latency.usage import bracket
from mdp_cli.latency.usage import rows_used as bracketing_rows
from mdp_cli.space.core import PruningSpace, SpaceTerm

SIZE_COLUMNS = ("embed", "heads", "qk", "v", "hidden")


def unique_terms(space: PruningSpace) -> dict[str, SpaceTerm]:
    out: dict[str, SpaceTerm] = {}
    for term in space.terms:
        out.setdefault(term.signature(), term)
    return out


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


def term_tables(space: PruningSpace, rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Every term's own interpolated table (``term_table``), keyed by term name: the tables of a space
    without an attention split (Swin)."""
    by_sig = {sig: term_table(space, term, rows) for sig, term in unique_terms(space).items()}
    return {term.name: by_sig[term.signature()] for term in space.terms}


def vit_tables(space: PruningSpace, lut: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Full-option latency table (ms) of every term of the space, keyed by term name; ``lut`` is
    ``{"rows": [...]}`` (``rows_from_lut``)."""
    rows = _projection_rows(space, lut["rows"])
    by_sig: dict[str, np.ndarray] = {}
    for sig, term in unique_terms(space).items():
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


def lut_sizes(row: Mapping[str, Any]) -> str:
    """``embed=192;heads=3;qk=64;v=8``: a ViT row's sizes in the shared LUT's ``sizes`` column."""
    roles = [c for c in SIZE_COLUMNS if c in row]
    return sizes_key(roles, [row[c] for c in roles])


def rows_from_lut(lut, space: PruningSpace, only: set[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """The rows of ``space``'s op signatures from a shared LUT, in the form ``vit_tables`` reads (``ms`` is
    the LUT's statistic, ``Lut.values``). ``only``: (signature, sizes) keys
    to keep: the grid points this space was profiled on. Another model with the same token count shares
    the signatures but not the sizes; its rows must not enter this model's sub-grid."""
    wanted = {t.signature() for t in space.terms}
    f = lut.frame
    rows = []
    for op, sig, sizes, ms in zip(f["op"], f["signature"].astype(str), f["sizes"].astype(str), lut.values()):
        if sig not in wanted or (only is not None and (sig, sizes) not in only):
            continue
        rows.append({"op": op, "signature": sig, "ms": float(ms), **parse_sizes(sizes)})
    return rows


def parse_sizes(key: str) -> dict[str, int]:
    """``embed=192;heads=3;qk=64;v=8`` -> {"embed": 192, ...}: the inverse of ``lut_sizes``."""
    out = {}
    for part in filter(None, key.split(";")):
        k, v = part.split("=", 1)
        out[k] = int(v)
    return out


def split_attention_counts(space: PruningSpace, counts: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Parameter/FLOP counts of the ViT terms (``latency.counts.space_counts``) with the attention branch's
    counts split between ``qk`` and ``vproj`` as its latency is (``vit_tables``): each op builds the whole
    branch at the other one's reference width, so half of the count at both references is taken off each.
    The counts are linear in Q and V for given (E, H), so the split is exact."""
    out = {name: dict(value) for name, value in counts.items()}
    for term in space.terms:
        if term.op not in ("vit_qk", "vit_vproj"):
            continue
        qk_term = next(t for t in space.terms if t.op == "vit_qk" and t.context == term.context
                       and t.block == term.block)
        for resource, table in counts[term.name].items():
            ref = np.asarray(counts[qk_term.name][resource])[:, :, 0]  # the branch at (qk_ref, v_ref)
            out[term.name][resource] = np.asarray(table) - ref[:, :, None] / 2
    return out


def rows_used(space: PruningSpace, measurements: Sequence[Measurement], choice: Mapping[str, int],
              kept: Mapping[str, bool]) -> list[Measurement]:
    """The planned rows (of ``measurements``) that the prediction of ``vit_tables`` (or ``term_tables``) for
    the configuration ``choice``/``kept`` (as in ``usage.rows_used``) reads, each once: the rows every kept term
    interpolates (``usage.rows_used``) and what the attention split subtracts from them, i.e. for each kept
    qk or vproj term the reference R(E, H) (the qk slice's rows at the smallest Q, at the E and H that
    bracket the chosen ones), and for each qk or vproj row read, the sdpa rows that bracket its own (H, Q, V)
    (S is subtracted from it before interpolation). A space without ``vit_sdpa`` (Swin) has no split: the
    bracketing rows are all.

    Interpolation, the subtraction and the clip at 0 are positively homogeneous in the rows, so scaling
    exactly these rows by a factor scales the prediction by it (up to rounding), and no other row changes
    it. Some rows can cancel out of a sum (at Q = qk_ref and V = v_ref, S and the qk slice's row drop out
    of qk + vproj + sdpa): listed all the same, re-measuring them is harmless."""
    out = {m.key: m for m in bracketing_rows(space, measurements, choice, kept)}
    kernel = next((t for t in space.terms if t.op == "vit_sdpa"), None)
    if kernel is None:
        return list(out.values())
    by_signature: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_signature.setdefault(m.signature, []).append(m)

    def add(rows: list[Measurement], sizes: Mapping[str, set[int]]) -> None:
        for m in rows:
            if all(int(m.sizes[role]) in wanted for role, wanted in sizes.items()):
                out.setdefault(m.key, m)

    for term in space.terms:
        if term.op not in ("vit_qk", "vit_vproj") or (term.block is not None and not kept.get(term.block, True)):
            continue
        qk_term = next(t for t in space.terms if t.op == "vit_qk" and t.context == term.context)
        rows = by_signature.get(qk_term.signature(), [])
        reads = {role: bracket([m.sizes[role] for m in rows], int(choice.get(dim, space.dim(dim).size)))
                 for dim, role in zip(term.dims, term.roles) if role in ("embed", "heads")}
        reads["qk"] = bracket([m.sizes["qk"] for m in rows], space.dim(qk_term.dims[-1]).options[0])
        add(rows, reads)
    kernel_rows = by_signature.get(kernel.signature(), [])
    for m in list(out.values()):
        if m.op in ("vit_qk", "vit_vproj"):
            at = parse_sizes(m.sizes_key)  # the slice's sizes with the other slice's reference width
            add(kernel_rows, {role: bracket([k.sizes[role] for k in kernel_rows], at[role]) for role in kernel.roles})
    return list(out.values())
