"""The Pareto-state knapsack DP against enumeration, including removable groups and infeasible capacities."""

import itertools

import numpy as np
import pytest

from mdp_cli.solve.knapsack import KnapsackGroup, solve_mckp


def _enumerate(groups, capacity):
    best = None
    choices = [([None] if g.removable else []) + list(range(g.latency.size)) for g in groups]
    for combo in itertools.product(*choices):
        latency = sum(0.0 if c is None else g.latency[c] for g, c in zip(groups, combo))
        value = sum(0.0 if c is None else g.importance[c] for g, c in zip(groups, combo))
        if latency <= capacity and (best is None or value > best[0]):
            best = (value, combo)
    return best


@pytest.mark.parametrize("seed", range(200))
def test_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    groups = [KnapsackGroup(np.sort(rng.random(n) * 3), np.sort(rng.random(n) * 2), bool(rng.random() < 0.6))
              for n in rng.integers(1, 5, size=rng.integers(1, 5))]
    capacity = rng.random() * 5
    expected = _enumerate(groups, capacity)
    result = solve_mckp(groups, capacity)
    if expected is None:
        assert result is None
        return
    value, picks = result
    assert value == pytest.approx(expected[0], abs=1e-12)
    # The picks achieve the value within the capacity.
    assert sum(0.0 if p is None else g.latency[p] for g, p in zip(groups, picks)) <= capacity
    assert sum(0.0 if p is None else g.importance[p] for g, p in zip(groups, picks)) == pytest.approx(value)


def test_lower_bound_above_optimum_returns_none():
    groups = [KnapsackGroup(np.array([1.0, 2.0]), np.array([1.0, 3.0]), True)]
    assert solve_mckp(groups, 2.0)[0] == 3.0
    assert solve_mckp(groups, 2.0, lower_bound=3.5) is None
