"""Latency tables with negative entries: the linear (HALP-style) latency model spreads each term's dense
latency over its dims (solve/linear.py), so a thin width can cost less than nothing. Every search must stay
exact there: a partial selection over the budget may still be completed within it by later negative terms,
and a kept-but-thin block may cost less than removing it.

Found by scripts/bench_ablation.py: the hub decomposition's knapsack DP dropped partial selections over the
budget and its leaf bound dropped hub assignments whose ungated part alone exceeded it, so it missed the
optimum the monolithic MILP proves and called feasible budgets infeasible."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from random_problems import random_problem
from mdp_cli.errors import InfeasibleBudgetError
from mdp_cli.solve import solve_problem
from mdp_cli.solve.brute import brute_force
from mdp_cli.solve.knapsack import KnapsackGroup, solve_mckp
from mdp_cli.solve.linear import linearize
from mdp_cli.solve.problem import Term
from mdp_cli.solve.solver import solve_budgets
from mdp_cli.solve.synthetic import example_problem

EXAMPLES = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("budget", [0.2, 0.3])
def test_linear_model_hub_matches_monolithic(budget: float) -> None:
    """The reproduction of the bug (was a strict xfail): the bundled example, channels only."""
    problem = example_problem()
    assert any((t.table < 0).any() for t in linearize(problem).terms)
    exact = solve_problem(problem, budget=budget, latency_model="linear", blocks=False, formulation="monolithic")
    assert exact.status == "optimal"
    hub = solve_problem(problem, budget=budget, latency_model="linear", blocks=False, formulation="hub")
    assert hub.status == "optimal"
    assert hub.objective == pytest.approx(exact.objective, rel=1e-9)
    assert hub.linear_latency <= hub.budget


def _configurations(problem, blocks):
    names = [d.name for d in problem.dims]
    removable = [b.name for b in problem.blocks if b.removable] if blocks else []
    for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
        for flags in itertools.product((True, False), repeat=len(removable)):
            yield dict(zip(names, indices)), dict(zip(removable, flags))


def _shifted(problem, rng):
    """Every term lowered by up to 1.5x its largest entry (many entries negative); the constant raised by
    the same amounts, so the dense latency is unchanged and removing a block can now cost latency."""
    terms, constant = [], problem.constant_latency
    for term in problem.terms:
        offset = float(rng.uniform(0.2, 1.5) * np.max(term.table))
        terms.append(Term(term.name, term.dims, term.table - offset, term.block))
        constant += offset
    return dataclasses.replace(problem, terms=terms, constant_latency=constant)


def _budgets(latency_problem, blocks, rng, dense):
    """Two budgets exactly on achievable latencies, one between two of them, one below the least."""
    latencies = sorted({latency_problem.latency(c, k) for c, k in _configurations(latency_problem, blocks)})
    inside = [x for x in latencies if 0 < x < dense]
    picked = [inside[i] for i in rng.choice(len(inside), size=min(2, len(inside)), replace=False)]
    if len(inside) >= 2:
        i = int(rng.integers(len(inside) - 1))
        picked.append((inside[i] + inside[i + 1]) / 2)
    if latencies[0] > 0:
        picked.append(latencies[0] * 0.999)
    return picked


def _check(problem, latency_model, blocks, budgets, latency_problem, monkeypatch_context):
    import mdp_cli.solve.decompose as decompose

    references = [brute_force(problem, b, blocks, latency_problem) for b in budgets]
    texts = [f"{b!r}ms" for b in budgets]
    options = dict(latency_model=latency_model, blocks=blocks)
    runs = {f: solve_budgets(problem, texts, formulation=f, **options) for f in ("hub", "monolithic")}
    with monkeypatch_context() as patch:  # every hub through the branch and bound, every block lazily
        patch.setattr(decompose, "EXACT_BOUNDS_UP_TO", 0)
        patch.setattr(decompose, "MAX_ENUMERATED_CELLS", 1)
        runs["hub, lazy"] = solve_budgets(problem, texts, formulation="hub", **options)
    for budget, reference, *answers in zip(budgets, references, *runs.values()):
        for name, answer in zip(runs, answers):
            if reference is None:
                assert isinstance(answer, InfeasibleBudgetError), (name, budget)
                continue
            assert not isinstance(answer, Exception), (name, budget, answer)
            assert answer.status == "optimal", name
            assert answer.objective == pytest.approx(reference[0], rel=1e-9, abs=1e-12), (name, budget)
            assert latency_problem.latency(answer.option_index, answer.kept) <= budget, name


@settings(max_examples=25, **EXAMPLES)
@given(seed=st.integers(0, 10**6), blocks=st.booleans())
@example(seed=5, blocks=True)  # seeds the unfixed search got wrong: a worse optimum,
@example(seed=10, blocks=False)  # a feasible budget called infeasible,
@example(seed=23, blocks=True)  # with blocks removable too
def test_linear_model_hub_monolithic_and_brute_force_agree(seed, blocks):
    problem = random_problem(seed, max_dims=4)
    latency_problem = linearize(problem)
    if not any((t.table < 0).any() for t in latency_problem.terms):
        return  # (the random tables gave no negative entry: nothing new to check)
    budgets = _budgets(latency_problem, blocks, np.random.default_rng(seed), problem.dense_latency)
    _check(problem, "linear", blocks, budgets, latency_problem, pytest.MonkeyPatch.context)


@settings(max_examples=25, **EXAMPLES)
@given(seed=st.integers(0, 10**6), blocks=st.booleans())
def test_negative_tables_over_several_dims_hub_monolithic_and_brute_force_agree(seed, blocks):
    """Negative entries in tables over two or three dims (hub tables, eliminated blocks), with the
    multi-dimensional model."""
    rng = np.random.default_rng(seed)
    problem = _shifted(random_problem(seed, max_dims=4), rng)
    budgets = _budgets(problem, blocks, rng, problem.dense_latency)
    _check(problem, "multidim", blocks, budgets, problem, pytest.MonkeyPatch.context)


@settings(max_examples=150, **EXAMPLES)
@given(seed=st.integers(0, 10**6))
def test_knapsack_dp_with_negative_latencies(seed):
    """Items below zero, removal (0, 0) beside them; capacities on achievable sums and between them."""
    rng = np.random.default_rng(seed)
    groups = []
    for n in rng.integers(1, 5, size=rng.integers(1, 6)).tolist():
        latency = np.sort(rng.uniform(-3, 3, n))
        groups.append(KnapsackGroup(latency, np.sort(rng.random(n)), bool(rng.random() < 0.5)))
    choices = [([None] if g.removable else []) + list(range(g.latency.size)) for g in groups]
    combos = list(itertools.product(*choices))

    def latency(combo):
        return sum(0.0 if c is None else g.latency[c] for g, c in zip(groups, combo))

    def value(combo):
        return sum(0.0 if c is None else g.importance[c] for g, c in zip(groups, combo))

    sums = sorted({latency(c) for c in combos})
    for capacity in [sums[i] for i in rng.choice(len(sums), size=min(3, len(sums)), replace=False)] + \
            [sums[0] - 0.5, (sums[0] + sums[-1]) / 2]:
        feasible = [value(c) for c in combos if latency(c) <= capacity]
        found = solve_mckp(groups, capacity, slack=1e-9 * abs(capacity),
                           accept=lambda p, cap=capacity: latency(p) <= cap)
        if not feasible:
            assert found is None
            continue
        assert found is not None and found[0] == pytest.approx(max(feasible), abs=1e-12)
        assert latency(found[1]) <= capacity


def test_pareto_ablations_sweep_the_linear_model_like_the_milp():
    """``mdp pareto --ablations``: the linear variant (hub search, warm-started budget to budget) keeps the
    importance the monolithic MILP proves at each budget, and reaches the budgets it should."""
    from mdp_cli.solve.pareto import pareto_front

    problem = example_problem()
    fractions = [0.2, 0.3, 0.5, 0.8]
    table = pareto_front(problem, fractions, ["linear-latency"])
    assert list(table["status"]) == ["optimal"] * len(fractions)
    for fraction, kept in zip(fractions, table["importance_kept"]):
        exact = solve_problem(problem, fraction, latency_model="linear", formulation="monolithic")
        assert kept == pytest.approx(exact.objective / exact.dense_objective, rel=1e-9)
