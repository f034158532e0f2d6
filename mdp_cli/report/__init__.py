"""``mdp report``: one self-contained HTML page about a run directory, made from its artifacts alone.

    from mdp_cli.report import write_report
    write_report("runs/demo")            # runs/demo/report.html

It shows the Pareto front of the budget sweep, the chosen width of every dim and the removed blocks, the
export's predicted vs measured latency, accuracy before and after pruning and finetuning, the refinement
rounds, and the commands that reproduce the run (docs/report.md). It reads files only: no torch, no family.
"""

from __future__ import annotations

from pathlib import Path

from mdp_cli.artifacts import atomic_write_text
from mdp_cli.report.gather import RunArtifacts, gather
from mdp_cli.report.render import render

__all__ = ["RunArtifacts", "build_report", "gather", "write_report"]


def build_report(run_dir: str | Path, report_path: str | Path | None = None) -> str:
    """The HTML text of the report of ``run_dir`` (``report_path``: where it will be written, for the
    command that remakes it)."""
    return render(gather(run_dir), Path(report_path) if report_path is not None else None)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``output`` (default RUN_DIR/report.html) atomically; returns the path."""
    output = Path(output) if output is not None else Path(run_dir) / "report.html"
    atomic_write_text(output, build_report(run_dir, output))
    return output
