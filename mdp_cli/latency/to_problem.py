"""From space + LUT + importance to the solver's problem (``mdp.problem``): family-neutral.

- dims: the space's dims with their options and steps.
- importance: per dim, the ``base`` cumulative vector (gated by the dim's own block, if it lives inside
  one) plus one gated entry per residual block that contributes to a shared dim. Importance is rescaled so
  that the dense model's total is 100 (the argmax does not change; the solver's tolerances see O(1) values).
- terms: one table per latency term, read from the LUT by (signature, sizes) and, where only a coarser grid
  was measured, filled by multi-linear interpolation.
- blocks: the removable blocks (fixed parts are never gated, so they need no variable).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mdp_cli.errors import MdpError
from mdp_cli.latency.counts import space_counts
from mdp_cli.latency.lut import Lut, term_table
from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Problem, Term, make_problem
from mdp_cli.space.core import PruningSpace

IMPORTANCE_TOTAL = 100.0


def build_problem(space: PruningSpace, lut: Lut, importance: Mapping[str, Any] | None,
                  interpolate: bool = True, source: str = "importance", with_counts: bool = True,
                  **provenance_fields: Any) -> Problem:
    """The solver's problem: the space's dims with their importance, one term per latency term (its LUT table
    over the term's dims' options) with its parameter and FLOP counts (``with_counts``: for --max-params /
    --max-flops; ``latency/counts.py``), and the removable blocks."""
    dims = [Dim(d.name, tuple(int(o) for o in d.options), d.step) for d in space.dims]
    records = dict(importance.get("dims", {})) if importance else {}
    entries: list[ImportanceEntry] = []
    total = sum(float(r["cumulative"][-1]) for r in records.values()) if records else 0.0
    scale = IMPORTANCE_TOTAL / total if total > 0 else 1.0
    for d in space.dims:
        rec = records.get(d.name)
        if importance is None:
            # Latency-only problem (e.g. for the latency bench): a constant importance per kept chunk.
            entries.append(ImportanceEntry(d.name, np.arange(1, len(d.options) + 1, dtype=float), d.block))
            continue
        if rec is None:
            raise MdpError(f"{source}: no scores for dim {d.name}; re-run 'mdp score' for this model and options")
        if list(rec.get("options", [])) != list(d.options):
            raise MdpError(f"{source}: dim {d.name} was scored with options {rec.get('options')} but the space has "
                           f"{list(d.options)}; re-run 'mdp score' with the same --step/--multiple")
        base = rec.get("base", rec["cumulative"])
        entries.append(ImportanceEntry(d.name, np.asarray(base, dtype=float) * scale, d.block))
        for blk, values in sorted(rec.get("gated", {}).items()):
            entries.append(ImportanceEntry(d.name, np.asarray(values, dtype=float) * scale, blk))
    counts = space_counts(space) if with_counts else {}
    terms = []
    for t in space.terms:
        options = [space.dim(d).options for d in t.dims]
        table = term_table(lut, t.signature(), t.roles, options, interpolate=interpolate)
        terms.append(Term(t.name, tuple(t.dims), table, t.block, counts.get(t.name, {})))
    blocks = [Block(b.name, True) for b in space.blocks if b.removable]
    return make_problem(dims, entries, terms, blocks, constant_latency=0.0, name=space.model_name,
                        model=space.model_name, lut=str(lut.path), device=lut.device, dtype=lut.dtype,
                        batch=lut.batch, threads=lut.threads, **provenance_fields)


def choice_indices(problem: Problem, choice_sizes: Mapping[str, int]) -> dict[str, int]:
    """Option index per dim for a choice given in sizes (what solutions and exports speak)."""
    out = {}
    for dim in problem.dims:
        size = int(choice_sizes.get(dim.name, dim.size))
        if size not in dim.options:
            raise MdpError(f"dim {dim.name}: size {size} is not one of its options {list(dim.options)}")
        out[dim.name] = dim.options.index(size)
    return out


def predicted_latency(problem: Problem, choice_sizes: Mapping[str, int], kept: Mapping[str, bool] | None = None) -> float:
    return problem.latency(choice_indices(problem, choice_sizes), kept or {})
