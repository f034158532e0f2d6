"""Pareto front of a problem: the optimum at a sweep of budgets, for the multi-dimensional latency model
and, for comparison, the paper's ablations (linear latency model, channels only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mdp_cli.artifacts import atomic_path
from mdp_cli.errors import InfeasibleBudgetError
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solver import solve_budgets

VARIANTS = {
    "mdp": {"latency_model": "multidim", "blocks": True},
    "linear-latency": {"latency_model": "linear", "blocks": True},
    "channels-only": {"latency_model": "multidim", "blocks": False},
}


def pareto_front(problem: Problem, budgets: list[float], variants: list[str] = ("mdp",),
                 time_limit: float | None = None) -> pd.DataFrame:
    """One row per (variant, budget fraction): importance kept, the true (table) latency, status.

    A variant whose solution exceeds the budget under the true tables (the linear model can) is marked
    ``over_budget``; an unreachable budget gives a row with status ``infeasible``. The model is built once
    per variant and each budget's search starts from the optimum of the budget below it (solve_budgets)."""
    rows = []
    for variant in variants:
        # One prepared model per variant; budgets solved from the smallest up, each warm-started.
        solutions = solve_budgets(problem, list(budgets), time_limit=time_limit, **VARIANTS[variant])
        for fraction, solution in zip(budgets, solutions):
            if isinstance(solution, InfeasibleBudgetError):
                rows.append({"variant": variant, "budget": fraction, "status": "infeasible"})
                continue
            rows.append({
                "variant": variant, "budget": fraction, "status": solution.status,
                "latency": solution.predicted_latency, "latency_ratio": solution.latency_ratio,
                "importance_kept": solution.objective / solution.dense_objective if solution.dense_objective else None,
                "blocks_removed": sum(not k for k in solution.kept.values()),
                "over_budget": solution.predicted_latency > solution.budget * (1 + 1e-9),
                "solve_s": solution.timings.get("solve_s", 0.0),
            })
    return pd.DataFrame(rows)


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def save_plot(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rows in table[table["status"] != "infeasible"].groupby("variant", sort=False):
        ax.plot(rows["latency_ratio"], rows["importance_kept"], marker="o", label=variant)
        over = rows[rows["over_budget"]]
        if len(over):
            ax.scatter(over["latency_ratio"], over["importance_kept"], marker="x", color="red", zorder=3,
                       label=f"{variant}: over budget (true tables)")
    ax.set_xlabel("latency / dense latency (measured tables)")
    ax.set_ylabel("importance kept / dense")
    ax.set_title(title or "Pareto front")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
