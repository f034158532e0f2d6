"""Exhaustive search over every configuration: the reference the MILP is tested against (small problems)."""

from __future__ import annotations

import itertools

from mdp_cli.solve.problem import Problem


def brute_force(problem: Problem, budget: float, blocks: bool = True, latency_problem: Problem | None = None):
    """Return (best objective, choice, kept) over all configurations with latency <= budget, or None.

    ``latency_problem`` (same dims) supplies the latency when it differs (linear-model ablation)."""
    latency_problem = latency_problem or problem
    names = [d.name for d in problem.dims]
    removable = [b.name for b in problem.blocks if b.removable] if blocks else []
    best = None
    for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
        choice = dict(zip(names, indices))
        for flags in itertools.product((True, False), repeat=len(removable)):
            kept = dict(zip(removable, flags))
            if latency_problem.latency(choice, kept) > budget:
                continue
            value = problem.objective(choice, kept)
            if best is None or value > best[0]:
                best = (value, choice, kept)
    return best
