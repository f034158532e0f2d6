"""What to measure for a ViT space: a sub-grid of sizes per term, as ``Measurement``s for the profiling engine.

The attention branch T(E, H, Q, V) is timed whole (the SDPA kernel fuses QKᵀ, softmax and attn·V): at
(E, H, Q, v_ref) for ``vit_qk`` and at (E, H, qk_ref, V) for ``vit_vproj`` (the two slices share their
reference point: one timing). ``vit_sdpa`` times the kernel alone on every Q and V option (up to
``FULL_AXIS_MAX`` per axis), since its cost follows max(Q, V) and the kernel's tiling; the other axes use
``grid`` points per role (``latency/vit_tables.py`` interpolates between them).

A block op is timed as a chain of distinct copies (as many as blocks share its signature, at most
``replicas``): a single module re-run on its own keeps its weights in cache and reads 25-40 % faster than
the same op inside the whole model (measured on deit_tiny, CPU). Samples are taken in three passes over all
configurations (``VIT_TIMING``), so drift during profiling spreads over every row, each configuration in turns
with three others, so that no op is timed with its own data left in cache.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mdp_cli.latency.engine import Measurement, TimingPlan
from mdp_cli.latency.vit_tables import lut_sizes, unique_terms
from mdp_cli.space.core import PruningSpace, SpaceTerm

DEFAULT_GRID = {"embed": 5, "heads": 4, "qk": 3, "v": 3, "hidden": 5}
FULL_AXES = {"vit_sdpa": ("qk", "v")}  # roles measured at every option (kernel tiling, max(Q, V)), not a sub-grid
FULL_AXIS_MAX = 16  # beyond this many options a "full" axis falls back to a sub-grid of this many points
UNCHAINED = ("vit_stem", "vit_head", "vit_sdpa")  # once per model, or weight-free: timed alone
# Configurations take turns in shuffled groups of four with the reference op, in three passes; a row whose passes
# disagree by more than 15 % relative to the reference gets a fourth. Not each alone with the reference: between
# two of its calls an op then finds its input, buffers and (unchained) weights still in cache, which it never does
# in a network; DeiT-S's stem and head timed so read 0.65x and 0.3-0.4x what they cost among other work, an
# under-prediction of 9 % at 5 % of dense (docs/latency.md §1 item 6). Four, not more: an item of a large ViT
# is a chain of copies of hundreds of MB, and a group is built at once.
VIT_TIMING = TimingPlan(chunk=4, rounds=3, reference=True, shuffle=True, recheck=0.15)


def subgrid(options: Iterable[int], n: int) -> list[int]:
    """``n`` options spread evenly over the list, always including the smallest and the full size."""
    options = list(options)
    if n >= len(options):
        return options
    idx = sorted({round(i * (len(options) - 1) / max(n - 1, 1)) for i in range(n)})
    return [options[i] for i in idx]


def points(space: PruningSpace, term: SpaceTerm, grid: Mapping[str, int]) -> list[dict[str, int]]:
    """The sizes (by role) at which ``term`` is measured."""
    full = FULL_AXES.get(term.op, ())
    axes = [subgrid(space.dim(d).options, FULL_AXIS_MAX) if role in full else subgrid(space.dim(d).options, int(grid.get(role, 4)))
            for d, role in zip(term.dims, term.roles)]
    if not axes:
        return [{}]
    mesh = np.meshgrid(*axes, indexing="ij")
    return [dict(zip(term.roles, map(int, values))) for values in zip(*(m.ravel() for m in mesh))]


def plan_measurements(space: PruningSpace, grid: Mapping[str, int], unchained: Iterable[str],
                      replicas: int | None = None, share_timings: bool = True) -> list[Measurement]:
    """Every LUT row the tables of a transformer space (ViT, Swin) need: each distinct term signature at its
    ``points``; ops of ``unchained`` timed alone, every other op as a chain of as many copies as terms share
    its signature (at most ``replicas``). The ViT attention slices carry the other slice's reference width
    in their sizes. ``share_timings``: give every row a ``share`` key, so that rows of one configuration
    (the qk and vproj slices at their common reference point) are timed once."""
    unchained = tuple(unchained)
    copies: dict[str, int] = {}
    for term in space.terms:
        if term.op not in unchained:
            copies[term.signature()] = copies.get(term.signature(), 0) + 1
    out = []
    for sig, term in unique_terms(space).items():
        n = copies.get(sig, 1) if replicas is None else max(1, min(int(replicas), copies.get(sig, 1)))
        for sizes in points(space, term, grid):
            row = dict(sizes)
            if term.op == "vit_qk":
                row["v"] = term.context["v_ref"]
            elif term.op == "vit_vproj":
                row["qk"] = term.context["qk_ref"]
            share = None
            if share_timings:
                # the qk and vproj sub-grids share their reference points: time each configuration once
                share = ("attn" if term.op in ("vit_qk", "vit_vproj") else term.op,
                         json.dumps(term.context, sort_keys=True), tuple(sorted(row.items())), n)
            out.append(Measurement(op=term.op, signature=sig, sizes_key=lut_sizes(row), context=term.context,
                                   sizes=sizes, copies=n, share=share))
    return out


def vit_measurements(space: PruningSpace, grid: Mapping[str, int] | None = None,
                     replicas: int | None = None) -> list[Measurement]:
    """Every LUT row the ViT tables of ``space`` need."""
    return plan_measurements(space, {**DEFAULT_GRID, **(grid or {})}, UNCHAINED, replicas)


def profile_vit(space: PruningSpace, device: str = "cpu", grid: Mapping[str, int] | None = None, warmup: int = 10,
                samples: int = 30, threads: int = 1, replicas: int | None = None,
                progress: bool = False) -> dict[str, Any]:
    """Measure ``space``'s rows into a throw-away LUT and return them as ``{"rows": [...]}`` for
    ``vit_tables`` (for scripts and tests; the pipeline profiles into the shared LUT instead)."""
    import mdp_cli.latency.vit_ops  # noqa: F401  (registers the ops; the family module does it for the pipeline)
    from mdp_cli.latency.engine import profile_into_lut
    from mdp_cli.latency.lut import Lut
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name
    from mdp_cli.latency.vit_tables import rows_from_lut

    device = check_device(device)
    dtype = canonical_dtype(space.terms[0].context.get("dtype", "float32") if space.terms else "float32")
    batch = int(space.terms[0].context.get("batch", 1)) if space.terms else 1
    with tempfile.TemporaryDirectory() as tmp:
        lut = Lut.open(Path(tmp) / "lut.csv", device_name(device), dtype, batch, threads)
        summary = profile_into_lut(lut, vit_measurements(space, grid, replicas), VIT_TIMING, device, warmup, samples,
                                   label=space.model_name, progress=progress)
        return {"rows": rows_from_lut(lut, space), "provenance": summary}
