"""A fast feasible configuration: shrink whatever loses the least importance per millisecond saved.

Not optimal (the MILP is), but always available in milliseconds to seconds: it is the fallback incumbent
when a time limit stops HiGHS before it finds one, so a time-limited solve still returns a configuration.
"""

from __future__ import annotations

from collections import defaultdict

from mdp_cli.solve.problem import Problem


def greedy_solution(problem: Problem, budget: float, latency_problem: Problem | None = None,
                    blocks: bool = True) -> tuple[dict[str, int], dict[str, bool]] | None:
    """Start dense; repeatedly take the move (one dim one option down, or removing a block) with the
    smallest importance lost per unit latency saved, until within ``budget``. None if it gets stuck."""
    latency_problem = latency_problem or problem
    choice = problem.dense_choice()
    kept = {b.name: True for b in problem.blocks}
    removable = [b.name for b in problem.blocks if b.removable] if blocks else []
    terms_of = defaultdict(list)
    for term in latency_problem.terms:
        for d in term.dims:
            terms_of[d].append(term)
    terms_of_block = defaultdict(list)
    for term in latency_problem.terms:
        if term.block is not None:
            terms_of_block[term.block].append(term)
    entries_of = defaultdict(list)
    for entry in problem.importance:
        entries_of[entry.dim].append(entry)
    entries_of_block = defaultdict(list)
    for entry in problem.importance:
        if entry.block is not None:
            entries_of_block[entry.block].append(entry)

    def term_value(term, state):
        if term.block is not None and not kept.get(term.block, True):
            return 0.0
        return float(term.table[tuple(state[d] for d in term.dims)])

    def entry_value(entry, state):
        if entry.block is not None and not kept.get(entry.block, True):
            return 0.0
        return float(entry.values[state[entry.dim]])

    latency = latency_problem.latency(choice, kept)
    while latency > budget:
        best = None
        for dim in problem.dims:
            k = choice[dim.name]
            if k == 0:
                continue
            trial = dict(choice, **{dim.name: k - 1})
            saved = sum(term_value(t, choice) - term_value(t, trial) for t in terms_of[dim.name])
            lost = sum(entry_value(e, choice) - entry_value(e, trial) for e in entries_of[dim.name])
            if saved > 0:
                score = lost / saved
                if best is None or score < best[0]:
                    best = (score, "dim", dim.name, saved)
        for block in removable:
            if not kept[block]:
                continue
            saved = sum(term_value(t, choice) for t in terms_of_block[block])
            lost = sum(entry_value(e, choice) for e in entries_of_block[block])
            if saved > 0:
                score = lost / saved
                if best is None or score < best[0]:
                    best = (score, "block", block, saved)
        if best is None:
            return None
        if best[1] == "dim":
            choice[best[2]] -= 1
        else:
            kept[best[2]] = False
        latency = latency_problem.latency(choice, kept)
    return choice, kept
