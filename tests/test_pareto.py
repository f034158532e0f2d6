import subprocess
import sys

import pandas as pd

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
