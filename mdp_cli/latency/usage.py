"""Which LUT rows a configuration's predicted latency reads: family-neutral, from the space's terms and the
rows a family plans to measure (``Family.measurements``).

A term of a kept block reads its table at the chosen sizes of its dims. On a full grid that is the row of the
term's signature at exactly those sizes; on a sub-grid (a CNN profiled with ``grid > 1``, a ViT) the table is
interpolated, so the rows read are the measured points that bracket each chosen size (the nearest measured
size below and above; the size itself when it was measured). Sizes of a row that are not one of the term's
roles (a ViT attention slice's reference width) do not select. ``mdp run --refine`` re-measures these rows.
"""

from __future__ import annotations

import bisect
from typing import Mapping, Sequence

from mdp_cli.latency.engine import Measurement
from mdp_cli.space.core import PruningSpace


def bracket(measured: Sequence[int], size: int) -> set[int]:
    """The measured sizes an interpolation at ``size`` reads: ``size`` itself when measured, else its
    neighbours below and above (one of them at either end)."""
    values = sorted(set(int(v) for v in measured))
    if not values:
        return set()
    i = bisect.bisect_left(values, int(size))
    if i < len(values) and values[i] == int(size):
        return {values[i]}
    return {values[j] for j in (i - 1, i) if 0 <= j < len(values)}


def rows_used(space: PruningSpace, measurements: Sequence[Measurement], choice: Mapping[str, int],
              kept: Mapping[str, bool]) -> list[Measurement]:
    """The planned rows (of ``measurements``) the configuration ``choice`` (dim -> kept size; a missing dim:
    its full size) with ``kept`` (block -> kept; a missing block: kept) reads, each (signature, sizes) once."""
    by_signature: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_signature.setdefault(m.signature, []).append(m)
    out: dict[tuple[str, str], Measurement] = {}
    for term in space.terms:
        if term.block is not None and not kept.get(term.block, True):
            continue
        rows = by_signature.get(term.signature(), [])
        reads: dict[str, set[int]] = {}
        for dim, role in zip(term.dims, term.roles):
            size = int(choice.get(dim, space.dim(dim).size))
            reads[role] = bracket([m.sizes[role] for m in rows if role in m.sizes], size)
        for m in rows:
            if all(int(m.sizes[role]) in sizes for role, sizes in reads.items() if role in m.sizes):
                out.setdefault(m.key, m)
    return list(out.values())
