"""Solve a pruning problem to proven optimality with HiGHS, through the Pyomo model of formulation.py."""

from __future__ import annotations

import io
import math
import time
from contextlib import redirect_stdout
from typing import Any

import pyomo.environ as pyo
from pyomo.contrib.solver.common.results import TerminationCondition
from pyomo.contrib.solver.solvers.highs import Highs

from mdp_cli.artifacts import library_versions
from mdp_cli.errors import InfeasibleBudgetError, MdpError
from mdp_cli.solve.budget import parse_budget
from mdp_cli.solve.formulation import Formulation, build_formulation
from mdp_cli.solve.linear import linearize
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solution import Solution

LATENCY_MODELS = ("multidim", "linear")
# HiGHS accepts a row as satisfied within its feasibility tolerance; we tighten the budget by this much
# of its value when the exactly recomputed latency lands above it, so "never over budget" holds exactly.
_BUDGET_RETRY_SHRINK = 1e-7


def solve_problem(
    problem: Problem,
    budget: str | float = 0.5,
    *,
    latency_model: str = "multidim",
    blocks: bool = True,
    time_limit: float | None = None,
    rel_gap: float = 0.0,
    threads: int | None = None,
    verbose: bool = False,
) -> Solution:
    """Maximise kept importance subject to predicted latency <= budget.

    ``budget`` is a fraction of the dense latency (0.5), a percentage ("50%") or an absolute latency
    ("3.5ms"). Returns the proven optimum (gap 0) unless ``time_limit`` stops the search first, in
    which case the best solution found and its gap are returned. Raises InfeasibleBudgetError naming the
    smallest reachable latency when no configuration fits.
    """
    if latency_model not in LATENCY_MODELS:
        raise MdpError(f"latency model {latency_model!r}: choose one of {', '.join(LATENCY_MODELS)}")
    dense_latency = problem.dense_latency
    budget_value = parse_budget(budget, dense_latency, problem.units)
    dense_choice = problem.dense_choice()
    dense_objective = problem.objective(dense_choice)
    kept_all = {b.name: True for b in problem.blocks}

    def make_solution(choice, kept, status, gap, bound, timings, solver_info, linear_latency=None) -> Solution:
        return Solution(
            problem_name=problem.name,
            problem_hash=problem.content_hash(),
            option_index=dict(choice),
            choice={d.name: d.options[choice[d.name]] for d in problem.dims},
            kept={b.name: bool(kept.get(b.name, True)) for b in problem.blocks},
            budget=budget_value,
            dense_latency=dense_latency,
            predicted_latency=problem.latency(choice, kept),
            objective=problem.objective(choice, kept),
            dense_objective=dense_objective,
            status=status,
            gap=gap,
            bound=bound,
            latency_model=latency_model,
            linear_latency=linear_latency,
            blocks_enabled=blocks,
            units=problem.units,
            timings=timings,
            solver=solver_info,
        )

    solver_info = {"name": "highs", "interface": "pyomo.contrib.solver", "versions": library_versions(),
                   "time_limit": time_limit, "rel_gap": rel_gap, "threads": threads}
    if budget_value >= dense_latency:
        # Nothing needs pruning; the dense model is the optimum by monotonicity of importance.
        return make_solution(dense_choice, kept_all, "nothing_to_prune", 0.0, dense_objective, {}, solver_info,
                             dense_latency if latency_model == "linear" else None)

    latency_problem = linearize(problem) if latency_model == "linear" else problem
    started = time.perf_counter()
    form = build_formulation(problem, latency_problem, blocks_enabled=blocks)
    model = form.model
    model.budget = pyo.Param(mutable=True, initialize=budget_value)
    model.latency_budget = pyo.Constraint(expr=form.latency_expression() <= model.budget)
    model.objective = pyo.Objective(expr=form.importance_expression(), sense=pyo.maximize)
    build_s = time.perf_counter() - started
    solver_info["model_size"] = form.stats

    timings = {"build_s": build_s, "solve_s": 0.0}
    target = budget_value
    for _attempt in range(4):
        result, solve_s = _run_highs(model, time_limit, rel_gap, threads, verbose)
        timings["solve_s"] += solve_s
        condition = result.termination_condition
        if condition in (TerminationCondition.provenInfeasible, TerminationCondition.infeasibleOrUnbounded):
            smallest = minimum_latency(problem, latency_problem, blocks, threads=threads)
            raise InfeasibleBudgetError(
                f"budget {budget_value:.4g} {problem.units} is below the smallest reachable latency "
                f"{smallest:.4g} {problem.units} ({smallest / dense_latency:.1%} of dense"
                f"{', linear model' if latency_model == 'linear' else ''}); raise --budget to at least that"
            )
        if result.incumbent_objective is None:
            raise MdpError(
                f"HiGHS stopped ({condition.name}) before finding any configuration within the budget; "
                f"raise --time-limit"
            )
        result.solution_loader.load_vars()
        choice, kept = form.chosen()
        check = latency_problem.latency(choice, kept)
        if check <= budget_value * (1 + 1e-9) + 1e-12:
            break
        # Tolerance-level overshoot: tighten the row a hair and re-solve.
        target -= max(abs(target) * _BUDGET_RETRY_SHRINK, check - budget_value)
        model.budget.set_value(target)
    else:
        raise MdpError("could not find a configuration within the budget within solver tolerances")

    incumbent, bound = result.incumbent_objective, result.objective_bound
    gap = _relative_gap(incumbent, bound)
    proven = condition == TerminationCondition.convergenceCriteriaSatisfied
    status = "optimal" if proven and gap <= max(rel_gap, 1e-9) else ("time_limit" if not proven else "gap_limit")
    return make_solution(
        choice, kept, status, gap, bound, timings, solver_info,
        linear_latency=latency_problem.latency(choice, kept) if latency_model == "linear" else None,
    )


def minimum_latency(problem: Problem, latency_problem: Problem | None = None, blocks: bool = True,
                    threads: int | None = None) -> float:
    """The smallest latency any allowed configuration reaches (solved exactly, ignoring importance)."""
    latency_problem = latency_problem or problem
    form = build_formulation(problem, latency_problem, blocks_enabled=blocks)
    form.model.objective = pyo.Objective(expr=form.latency_expression(), sense=pyo.minimize)
    result, _ = _run_highs(form.model, None, 0.0, threads, False)
    result.solution_loader.load_vars()
    choice, kept = form.chosen()
    return latency_problem.latency(choice, kept)


def _run_highs(model: pyo.ConcreteModel, time_limit, rel_gap, threads, verbose) -> tuple[Any, float]:
    solver = Highs()
    if not solver.available():
        raise MdpError("HiGHS is not available: pip install highspy")
    options: dict[str, Any] = {"mip_rel_gap": rel_gap, "mip_abs_gap": 0.0}
    started = time.perf_counter()
    sink = io.StringIO()
    with redirect_stdout(sink) if not verbose else _nullcontext():
        result = solver.solve(
            model,
            tee=verbose,
            time_limit=time_limit,
            threads=threads,
            load_solutions=False,
            raise_exception_on_nonoptimal_result=False,
            solver_options=options,
        )
    return result, time.perf_counter() - started


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _relative_gap(incumbent: float | None, bound: float | None) -> float | None:
    if incumbent is None or bound is None or not math.isfinite(bound):
        return None
    return abs(bound - incumbent) / max(abs(incumbent), 1e-10)
