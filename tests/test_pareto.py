import subprocess
import sys

import pandas as pd
import pytest

from mdp_cli.solve.pareto import pareto_front
from mdp_cli.solve.synthetic import example_problem


def test_front_is_monotone_and_mdp_never_exceeds_budget():
    table = pareto_front(example_problem(), [0.45, 0.55, 0.7, 0.9], ["mdp", "linear-latency", "channels-only"])
    mdp = table[table.variant == "mdp"]
    assert (mdp.status == "optimal").all()
    assert mdp.importance_kept.is_monotonic_increasing
    assert not mdp.over_budget.any() and (mdp.latency_ratio <= mdp.budget + 1e-12).all()
    # Removing blocks can only help: MDP keeps at least as much importance as channels-only at each budget.
    channels = table[(table.variant == "channels-only") & (table.status == "optimal")].set_index("budget")
    for _, row in mdp.iterrows():
        if row.budget in channels.index:
            assert row.importance_kept >= channels.loc[row.budget, "importance_kept"] - 1e-12
    # The linear model misjudges the true tables on this problem.
    assert table[table.variant == "linear-latency"].over_budget.any()


def test_cli_writes_table_and_plot(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mdp_cli", "pareto", "--example", "--budgets", "0.5,0.8",
                             "-o", str(tmp_path / "front.csv"), "--plot", str(tmp_path / "front.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "front.csv")) == 2
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_solve_budgets_warm_starts_to_the_same_optima_as_separate_solves():
    """Budgets solved from the smallest up, each from the optimum below it: same optima as cold solves,
    unreachable budgets reported in place, the result in the order given."""
    import numpy as np

    from mdp_cli.errors import InfeasibleBudgetError
    from mdp_cli.solve import solve_problem
    from mdp_cli.solve.solver import solve_budgets
    from mdp_cli.solve.synthetic import resnet_problem

    problem = resnet_problem(depths=(2, 2), mids=(64, 128), step=32, resolution=64, batch=64, seed=3)
    budgets = [0.9, 0.05, 0.33] + np.linspace(0.35, 0.85, 8).round(3).tolist()
    warm = solve_budgets(problem, budgets)
    assert isinstance(warm[1], InfeasibleBudgetError)
    for budget, solution in zip(budgets, warm):
        if budget == 0.05:
            continue
        cold = solve_problem(problem, budget)
        assert solution.status == cold.status == "optimal"
        assert solution.objective == pytest.approx(cold.objective, rel=1e-12)
        assert solution.predicted_latency <= solution.budget
    warm_started = [s.solver["decomposition"]["warm_start"] for s in warm if not isinstance(s, Exception)]
    assert warm_started.count(False) == 1  # only the smallest reachable budget starts cold


def test_solve_budgets_matches_brute_force_on_random_problems():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from random_problems import random_problem

    from mdp_cli.solve.brute import brute_force
    from mdp_cli.solve.solver import solve_budgets

    for seed in range(10):
        problem = random_problem(seed)
        fractions = [0.95, 0.4, 0.6, 0.8, 0.5]
        for fraction, solution in zip(fractions, solve_budgets(problem, fractions, formulation="hub")):
            reference = brute_force(problem, fraction * problem.dense_latency)
            if reference is None:
                assert isinstance(solution, Exception)
                continue
            assert solution.objective == pytest.approx(reference[0], rel=1e-9, abs=1e-12)
