"""`mdp report RUN_DIR`: the click layer over ``mdp_cli.report.write_report``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default RUN_DIR/report.html).")
def report_command(run_dir, output):
    """One self-contained HTML page about RUN_DIR: Pareto front of the sweep, widths and blocks, predicted vs
    measured latency, accuracy, refinement rounds, and the commands that reproduce it."""
    from mdp_cli.report import write_report

    path = write_report(run_dir, output)
    click.echo(f"wrote {path}")
