"""`mdp solve`: read a problem, solve it under a budget, write the solution (click layer only)."""

from __future__ import annotations

from pathlib import Path

import click

from mdp_cli.errors import MdpError
from mdp_cli.solve.problem import load_problem
from mdp_cli.solve.solver import FORMULATIONS, KNAPSACK_ENGINES, LATENCY_MODELS, solve_problem

EXAMPLE = "example_problem.json"


def example_problem_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("mdp_cli") / "data" / EXAMPLE))


@click.command("solve")
@click.argument("problem", required=False, type=click.Path(path_type=Path))
@click.option("--example", is_flag=True, help="Solve the bundled example problem (a small bottleneck ResNet).")
@click.option("--budget", "-b", default="0.5", show_default=True,
              help="Fraction of the dense latency (0.5), percentage (50%) or absolute latency (3.5ms, 800us).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the solution JSON here (atomically; nothing is written on error).")
@click.option("--latency-model", type=click.Choice(LATENCY_MODELS), default="multidim", show_default=True,
              help="multidim: the measured tables; linear: HALP-style per-dim costs (ablation).")
@click.option("--no-blocks", is_flag=True, help="Never remove blocks: prune channels/dims only (ablation).")
@click.option("--time-limit", type=float, help="Seconds; the best solution found and its gap are reported.")
@click.option("--gap", "rel_gap", type=float, default=0.0, show_default=True,
              help="Relative optimality gap at which to stop (0 proves the optimum).")
@click.option("--formulation", type=click.Choice(FORMULATIONS), default="auto", show_default=True,
              help="auto: hub decomposition when the shared dims allow it, else the monolithic MILP.")
@click.option("--knapsack", type=click.Choice(KNAPSACK_ENGINES), default="dp", show_default=True,
              help="Engine for the hub decomposition's per-branch knapsacks.")
@click.option("--threads", type=int, help="HiGHS threads.")
@click.option("--verbose", "-v", is_flag=True, help="Show the HiGHS log.")
@click.option("--show-dims", is_flag=True, help="List every dim's chosen size, not only the pruned ones.")
@click.option("--max-params", help="Also cap the kept parameters (10M, 2.5e6); needs 'params' counts in the problem.")
@click.option("--max-flops", help="Also cap the FLOPs (4G); needs 'flops' counts in the problem.")
@click.option("--min-keep", type=float, help="Keep at least this fraction of every dim (0.25).")
@click.option("--multiple", type=int, help="Every width a multiple of this (8); full sizes always allowed.")
@click.option("--sweep", help="Solve at every budget of start:stop:step (0.3:0.9:0.1, stop included) or a comma "
                              "list (0.3,0.5,0.7), warm-starting each from the one below; writes a sweep JSON "
                              "(-o, default sweep.json beside the problem) instead of a solution.")
def solve_command(problem, example, budget, output, latency_model, no_blocks, time_limit, rel_gap, formulation,
                  knapsack, threads, verbose, show_dims, max_params, max_flops, min_keep, multiple, sweep):
    """Choose every dim's size and every block's fate to keep the most importance within the budget.

    PROBLEM is a problem JSON, a run directory (its problem.json is rebuilt if out of date) or a YAML
    pipeline config (profile, score and problem stages run first, skipping unchanged ones)."""
    options = dict(latency_model=latency_model, blocks=not no_blocks, time_limit=time_limit, rel_gap=rel_gap,
                   threads=threads, verbose=verbose, formulation=formulation, knapsack=knapsack,
                   max_params=max_params, max_flops=max_flops, min_keep=min_keep, multiple=multiple)
    if sweep is not None:
        from mdp_cli.solve.sweep import parse_sweep

        budgets = parse_sweep(sweep)  # a bad spec is reported before any problem is built
        if click.get_current_context().get_parameter_source("budget").name == "COMMANDLINE":
            raise MdpError("--budget and --sweep both given; --sweep solves every budget of its range, drop --budget")
        path = _problem_path(problem, example)
        _solve_sweep(path, example, budgets, sweep, output, options)
        return
    path = _problem_path(problem, example)
    loaded = load_problem(path)
    try:
        solution = solve_problem(loaded, budget, **options)
    except MdpError as exc:  # name the problem file in solver errors too
        raise type(exc)(f"{path}: {exc}") from None
    click.echo(f"problem     {path} ({loaded.name}, {len(loaded.dims)} dims, {len(loaded.terms)} latency terms, "
               f"{len(loaded.blocks)} blocks)")
    if solution.status == "nothing_to_prune":
        click.echo(f"budget {solution.budget:.4g} {loaded.units} is at or above the dense latency "
                   f"{solution.dense_latency:.4g} {loaded.units}: nothing to prune, the dense model is the solution")
    click.echo(solution.summary())
    _echo_dims(loaded, solution, show_dims)
    if output:
        solution.save(output, problem=str(path), budget_arg=str(budget))
        click.echo(f"wrote       {output}")


def _solve_sweep(path: Path, example: bool, budgets: list[float], spec: str, output: Path | None,
                 options: dict) -> None:
    """``mdp solve --sweep``: every budget, one table, one sweep artifact."""
    from mdp_cli.solve.sweep import save_sweep, solve_sweep

    loaded = load_problem(path)
    try:
        record = solve_sweep(loaded, budgets, spec, **options)
    except MdpError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    click.echo(f"problem     {path} ({loaded.name}, {len(loaded.dims)} dims, {len(loaded.blocks)} blocks), "
               f"{len(budgets)} budgets")
    click.echo(f"{'budget':>7}  {'status':<16}  {'latency':>10}  {'of dense':>8}  {'importance':>10}  {'removed':>7}")
    for p in record["points"]:
        if p["status"] == "infeasible":
            click.echo(f"{p['budget']:>7.3g}  {'infeasible':<16}  (below the smallest reachable latency)")
            continue
        removed = sum(not k for k in p["blocks"].values())
        click.echo(f"{p['budget']:>7.3g}  {p['status']:<16}  {p['predicted_latency']:>7.4g} {loaded.units:<2}  "
                   f"{p['latency_fraction']:>8.1%}  {p['importance_fraction'] or 0:>10.1%}  {removed:>7}")
    if output is None and not example:
        output = path.parent / "sweep.json"
    if output is not None:
        save_sweep(output, record, problem=str(path), sweep=spec)
        click.echo(f"wrote       {output}")


def _problem_path(problem: Path | None, example: bool) -> Path:
    """PROBLEM as given (a problem JSON, a run directory or a YAML config), the bundled example, or
    ./problem.json when neither is given (so that `mdp solve --budget 0.5` works inside a run directory)."""
    if example and problem is not None:
        raise MdpError("give a PROBLEM file or --example, not both")
    if example:
        return example_problem_path()
    if problem is None:
        problem = Path("problem.json")
        if not problem.is_file():
            raise MdpError("no PROBLEM given and no problem.json here; pass a problem file, a run directory, "
                           "a config, or --example")
    if problem.is_dir() or problem.suffix in (".yaml", ".yml"):
        # A run directory or a pipeline config: build (or reuse) its problem from space + LUT + importance.
        from mdp_cli.pipeline import ensure_problem

        return ensure_problem(problem, echo=click.echo)
    return problem


def _echo_dims(problem, solution, show_all: bool, limit: int = 40) -> None:
    rows = [(d.name, d.size, solution.choice[d.name]) for d in problem.dims
            if show_all or solution.choice[d.name] != d.size]
    removed = {b for b, kept in solution.kept.items() if not kept}
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'dim':<{width}}  {'full':>6}  {'kept':>6}")
    for name, full, kept in rows[:limit]:
        note = "  (in a removed block)" if any(name.startswith(b + ".") for b in removed) else ""
        click.echo(f"{name:<{width}}  {full:>6}  {kept:>6}{note}")
    if len(rows) > limit:
        click.echo(f"... {len(rows) - limit} more (see the solution file)")


@click.command("pareto")
@click.argument("problem", required=False, type=click.Path(path_type=Path))
@click.option("--example", is_flag=True, help="Use the bundled example problem.")
@click.option("--budgets", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", show_default=True,
              help="Comma-separated fractions of the dense latency.")
@click.option("--ablations", is_flag=True, help="Also sweep the linear latency model and channels-only pruning.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="CSV table of the front.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="PNG plot of the front.")
@click.option("--time-limit", type=float, help="Seconds per solve.")
def pareto_command(problem, example, budgets, ablations, output, plot, time_limit):
    """Solve at a sweep of budgets: importance kept vs latency (with --ablations, the paper's variants)."""
    from mdp_cli.solve.pareto import VARIANTS, pareto_front, save_plot, save_table

    path = _problem_path(problem, example)
    try:
        fractions = [float(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise MdpError(f"--budgets {budgets!r}: expected comma-separated fractions such as 0.3,0.5,0.7") from None
    loaded = load_problem(path)
    table = pareto_front(loaded, fractions, list(VARIANTS) if ablations else ["mdp"], time_limit)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if output:
        save_table(table, output)
        click.echo(f"wrote {output}")
    if plot:
        save_plot(table, plot, title=f"{loaded.name}: importance kept vs latency")
        click.echo(f"wrote {plot}")
