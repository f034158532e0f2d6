"""The report's figures, each a PNG as base64 text for an ``<img src="data:image/png;base64,...">`` (no files,
no external resources). matplotlib runs headless (Agg) and is imported only here."""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _encode(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pareto_plot(points: Sequence[dict[str, Any]], chosen: tuple[float, float] | None = None,
                measured: tuple[float, float] | None = None) -> str:
    """Importance kept vs predicted latency (fractions of dense) over the sweep; the run's solution and its
    measured latency marked when known."""
    plt = _pyplot()
    solved = [p for p in points if p["status"] != "infeasible" and p.get("importance_fraction") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs, ys = [p["latency_fraction"] for p in solved], [p["importance_fraction"] for p in solved]
    ax.plot(xs, ys, marker="o", label="optimum at each budget (predicted)")
    for p in solved:
        ax.annotate(f"{p['budget']:g}", (p["latency_fraction"], p["importance_fraction"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="0.35")
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1]], marker="*", s=180, color="tab:orange", zorder=3,
                   label="this run's solution (predicted)")
    if measured is not None:
        ax.scatter([measured[0]], [measured[1]], marker="X", s=90, color="tab:red", zorder=3,
                   label="its export, measured")
        if chosen is not None:
            ax.annotate("", xy=measured, xytext=chosen, arrowprops={"arrowstyle": "->", "color": "tab:red"})
    ax.set_xlabel("latency / dense latency")
    ax.set_ylabel("importance kept / dense")
    ax.set_title("Pareto front over the budget sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _encode(fig)


def widths_plot(names: Sequence[str], fractions: Sequence[float], removed: Sequence[bool]) -> str:
    """Kept fraction of every dim in network order; dims whose block is removed drawn grey and hatched."""
    plt = _pyplot()
    width = min(max(6.4, 0.22 * len(names) + 2), 24)
    fig, ax = plt.subplots(figsize=(width, 4.2))
    colours = ["0.75" if r else "tab:blue" for r in removed]
    bars = ax.bar(range(len(names)), fractions, color=colours)
    for bar, r in zip(bars, removed):
        if r:
            bar.set_hatch("//")
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) < 60 else 5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept / dense width")
    ax.set_title("Width of every dim (grey, hatched: in a removed block)")
    return _encode(fig)


def latency_plot(labels: Sequence[str], predicted: Sequence[float | None], measured: Sequence[float | None],
                 budget: float | None) -> str:
    """Predicted vs measured latency of each export, as fractions of dense (measured in turns with dense)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 1.6 * len(labels) + 2), 3.8))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [v or 0 for v in predicted], width=0.4, label="predicted (LUT)")
    ax.bar([x + 0.2 for x in xs], [v or 0 for v in measured], width=0.4, label="measured (in turns with dense)")
    if budget is not None:
        ax.axhline(budget, color="tab:red", ls="--", lw=1, label=f"budget {budget:.0%}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.8, len(labels) - 0.2)
    ax.set_ylim(0, max([budget or 0, *(v or 0 for v in (*predicted, *measured))]) * 1.35 or 1)
    ax.set_ylabel("latency / dense latency")
    ax.set_title("Predicted vs measured latency")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    return _encode(fig)


def calibration_plot(measured: Sequence[float], plain: Sequence[float], calibrated: Sequence[float] | None) -> str:
    """Predicted against measured fraction of dense for the calibration's configurations: the plain table and,
    where the fit is used, the calibrated one; on the diagonal a prediction is exact."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    top = max([*measured, *plain, *(calibrated or [])]) * 1.08
    ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="exact")
    ax.scatter(measured, plain, label="plain table", marker="o")
    if calibrated is not None:
        ax.scatter(measured, calibrated, label="calibrated", marker="x")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured latency / dense (in turns)")
    ax.set_ylabel("predicted latency / dense")
    ax.set_title("Latency table inside the network")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _encode(fig)


def accuracy_plot(labels: Sequence[str], top1: Sequence[float], curves: Sequence[tuple[str, list, list]]) -> str:
    """Top-1 of each evaluated model (bars) and, beside them, the validation top-1 per finetuning epoch."""
    plt = _pyplot()
    panels = 1 + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    if labels:
        bars = ax.bar(range(len(labels)), top1, color="tab:green")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8, rotation=15)
    else:
        ax.text(0.5, 0.5, "no mdp eval results", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy (mdp eval)")
    if curves:
        ax = axes[0][1]
        for name, epochs, values in curves:
            ax.plot(epochs, values, marker="o", label=name)
        epochs = sorted({e for _, xs, _ in curves for e in xs})
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title("Finetuning")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _encode(fig)


def refine_plot(rounds: Sequence[dict[str, Any]], target: float | None) -> str:
    """Predicted and measured fraction of dense per refinement round, with the budget the solver was given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["predicted_fraction"] for r in rounds], marker="o", label="predicted")
    ax.plot(xs, [r["measured_fraction"] for r in rounds], marker="s", label="measured")
    ax.plot(xs, [r["budget_solved"] for r in rounds], marker=".", ls=":", color="0.4", label="budget solved")
    if target is not None:
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("latency / dense latency")
    ax.set_title("Refinement rounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _encode(fig)
