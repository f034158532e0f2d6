"""Found by scripts/bench_ablation.py: with the linear (HALP-style) latency model, whose linearised tables hold
negative entries, the hub decomposition does not reach the optimum the monolithic MILP proves, and reports a
budget above the smallest reachable latency as infeasible. Left to the solver's owner (strict xfail: it fails
loudly once fixed, so the marker is removed)."""

from __future__ import annotations

import pytest

from mdp_cli.solve import solve_problem
from mdp_cli.solve.synthetic import example_problem


@pytest.mark.xfail(strict=True, reason="hub decomposition with the linear latency model (negative table entries)")
@pytest.mark.parametrize("budget", [0.2, 0.3])
def test_linear_model_hub_matches_monolithic(budget: float) -> None:
    problem = example_problem()
    exact = solve_problem(problem, budget=budget, latency_model="linear", blocks=False, formulation="monolithic")
    assert exact.status == "optimal"
    hub = solve_problem(problem, budget=budget, latency_model="linear", blocks=False, formulation="hub")
    assert hub.objective == pytest.approx(exact.objective, rel=1e-9)
