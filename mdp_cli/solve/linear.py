"""The HALP-style linear latency model, for the paper's ablation (``--latency-model linear``).

Each dim's option is costed with every other dim of the term frozen at its full size:
``T(i_a, full_rest) - (n-1)/n * T(full)`` summed over the term's ``n`` dims. It is exact at the dense
configuration and whenever a single dim of the term changes, and ignores how dims interact otherwise
(e.g. halving both a conv's input and output channels costs a quarter, not half, of its latency).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mdp_cli.solve.problem import Problem, Term


def linearize(problem: Problem) -> Problem:
    terms: list[Term] = []
    for term in problem.terms:
        n = len(term.dims)
        if n <= 1:
            terms.append(term)
            continue
        full = tuple(problem.dim(d).full_index for d in term.dims)
        dense_value = float(term.table[full])
        for axis, dim in enumerate(term.dims):
            index = list(full)
            index[axis] = slice(None)
            per_option = term.table[tuple(index)] - (n - 1) / n * dense_value
            terms.append(Term(f"{term.name}[{dim}]", (dim,), np.asarray(per_option, dtype=float), term.block))
    # Tables may hold negative entries here (the shared constant is spread over the dims); that is
    # an internal model, never read from disk, so it bypasses file validation.
    return dataclasses.replace(problem, terms=terms)
