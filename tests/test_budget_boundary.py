"""A budget placed exactly on an achievable latency admits that configuration, in every formulation.

Budgets in the problem's own unit are exact (``125009us`` is 125009.0, not 125008.99999999999), and a
configuration fits when its correctly rounded latency is at most the budget, whatever order a solver
adds its terms in."""

import itertools

import numpy as np
import pytest

from random_problems import random_problem
from mdp_cli.solve import solve_problem
from mdp_cli.solve.brute import brute_force
from mdp_cli.solve.budget import parse_budget
from mdp_cli.solve.knapsack import KnapsackGroup, solve_mckp
from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Term, make_problem

FORMULATIONS = ("hub", "monolithic", "blocks")


def _tiny_us_problem():
    problem = make_problem([Dim("a", (1, 2, 3))], [ImportanceEntry("a", np.array([0.0, 10.0, 11.0]))],
                           [Term("t", ("a",), np.array([1000.0, 125009.0, 125509.0]))])
    problem.units = "us"
    return problem


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("budget", ["125009us", "125.009ms", "0.125009s"])
def test_issue_example_keeps_the_option_on_the_budget(formulation, budget):
    solution = solve_problem(_tiny_us_problem(), budget, formulation=formulation)
    assert solution.budget == 125009.0
    assert solution.status == "optimal" and solution.objective == 10.0
    assert solution.predicted_latency == 125009.0


def test_budgets_in_the_problem_unit_are_exact():
    rng = np.random.default_rng(0)
    for n in rng.integers(1, 10**9, size=2000).tolist():
        assert parse_budget(f"{n}us", 1e12, "us") == float(n)
        assert parse_budget(f"{n / 1000}ms", 1e12, "us") == float(n)  # 125.009ms is 125009 us exactly
    for value in (rng.random(500) * 50).tolist():
        assert parse_budget(f"{value!r}ms", 1e3, "ms") == value  # a float's repr round-trips


def _configurations(problem):
    names = [d.name for d in problem.dims]
    removable = [b.name for b in problem.blocks if b.removable]
    for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
        for flags in itertools.product((True, False), repeat=len(removable)):
            yield dict(zip(names, indices)), dict(zip(removable, flags))


def _budgets_on_achievable_latencies(problem, rng, count=3):
    dense = problem.dense_latency
    latencies = sorted({problem.latency(c, k) for c, k in _configurations(problem)} - {dense})
    latencies = [x for x in latencies if x < dense]
    return [latencies[i] for i in rng.choice(len(latencies), size=min(count, len(latencies)), replace=False)]


def _budgets_a_float_conversion_would_miss(problem, rng, count=3):
    """Achievable whole-microsecond latencies that ``value * 1e-6 / 1e-6`` lands one step below (about
    8 % of the integers near 125000), or any achievable ones when there are none."""
    dense = problem.dense_latency
    latencies = sorted(x for x in {problem.latency(c, k) for c, k in _configurations(problem)} if x < dense)
    missed = [x for x in latencies if x * 1e-6 / 1e-6 != x] or latencies
    return [missed[i] for i in rng.choice(len(missed), size=min(count, len(missed)), replace=False)]


def _tenths_problem(seed: int, scale: int = 10):
    """Latencies in tenths of a microsecond (not exact in binary; with ``scale=1`` whole microseconds)
    and identical blocks, so that equal latencies are reached by sums in different orders."""
    rng = np.random.default_rng(seed)
    stage = Dim("stage", (8, 16, 24))
    dims, terms, importance, blocks = [stage], [], [ImportanceEntry("stage", np.array([1.0, 2.0, 2.5]))], []
    conv = rng.integers(1000, 200000, size=(3, 3)) / scale
    scores = np.cumsum(np.sort(rng.random(3))[::-1])
    for b in range(3):
        block = f"b{b}"
        blocks.append(Block(block))
        dims.append(Dim(f"{block}.mid", (4, 8, 12)))
        terms.append(Term(f"{block}.conv", ("stage", f"{block}.mid"), conv, block))
        importance.append(ImportanceEntry(f"{block}.mid", scores, block))
    terms.append(Term("head", ("stage",), rng.integers(1000, 90000, size=3) / scale))
    problem = make_problem(dims, importance, terms, blocks, constant_latency=1234 / scale, name=f"tenths{seed}")
    problem.units = "us"
    return problem


@pytest.mark.parametrize("seed", range(8))
def test_budgets_on_achievable_latencies_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    cases = [(random_problem(seed), _budgets_on_achievable_latencies), (_tenths_problem(seed), _budgets_on_achievable_latencies),
             (_tenths_problem(seed, scale=1), _budgets_a_float_conversion_would_miss)]
    for problem, pick in cases:
        for budget in pick(problem, rng):
            reference, _, _ = brute_force(problem, budget)
            for formulation in FORMULATIONS:
                solution = solve_problem(problem, f"{budget!r}{problem.units}", formulation=formulation)
                assert solution.budget == budget
                assert solution.status == "optimal"
                assert solution.predicted_latency <= budget
                assert solution.objective == pytest.approx(reference, rel=1e-9, abs=1e-12), formulation


@pytest.mark.parametrize("seed", range(100))
def test_knapsack_dp_at_capacities_equal_to_a_selection(seed):
    """Capacity = the latency of one selection, summed in group order (the DP's order): it must fit."""
    rng = np.random.default_rng(seed)
    groups = [KnapsackGroup(np.sort(rng.integers(1, 300, n) / 10), np.sort(rng.random(n)), bool(rng.random() < 0.5))
              for n in rng.integers(1, 5, size=rng.integers(1, 6))]
    choices = [([None] if g.removable else []) + list(range(g.latency.size)) for g in groups]

    def latency(combo):
        return sum(0.0 if c is None else g.latency[c] for g, c in zip(groups, combo))

    def value(combo):
        return sum(0.0 if c is None else g.importance[c] for g, c in zip(groups, combo))

    combos = list(itertools.product(*choices))
    for combo in [combos[i] for i in rng.choice(len(combos), size=min(4, len(combos)), replace=False)]:
        capacity = latency(combo)
        expected = max(value(c) for c in combos if latency(c) <= capacity)
        found, picks = solve_mckp(groups, capacity)
        assert found == pytest.approx(expected, abs=1e-12)
        assert latency(picks) <= capacity
        # With a slack band, a selection in the band is admitted only if the exact test says so.
        found, picks = solve_mckp(groups, capacity, slack=1e-9 * capacity,
                                  accept=lambda p: latency(p) <= capacity)
        assert found == pytest.approx(expected, abs=1e-12) and latency(picks) <= capacity
