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
import numpy as np

from mdp_cli.solve.decompose import analyse, solve_decomposed
from mdp_cli.solve.decompose import minimum_latency as decomposed_minimum_latency
from mdp_cli.solve.formulation import build_formulation
from mdp_cli.solve.greedy import greedy_solution
from mdp_cli.solve.linear import linearize
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solution import Solution

LATENCY_MODELS = ("multidim", "linear")
# auto: hub decomposition where the shared dims have few joint options, else the monolithic MILP.
FORMULATIONS = ("auto", "hub", "monolithic", "blocks")
# Per-branch knapsacks of the hub decomposition: Pareto-state DP (exact, fast on near-ties) or HiGHS.
KNAPSACK_ENGINES = ("dp", "highs")
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
    formulation: str = "auto",
    knapsack: str = "dp",
) -> Solution:
    """Maximise kept importance subject to predicted latency <= budget.

    ``budget`` is a fraction of the dense latency (0.5), a percentage ("50%") or an absolute latency
    ("3.5ms"). Returns the proven optimum (gap 0) unless ``time_limit`` stops the search first, in
    which case the best solution found and its gap are returned. Raises InfeasibleBudgetError naming the
    smallest reachable latency when no configuration fits.
    """
    if knapsack not in KNAPSACK_ENGINES:
        raise MdpError(f"knapsack engine {knapsack!r}: choose one of {', '.join(KNAPSACK_ENGINES)}")
    if formulation not in FORMULATIONS:
        raise MdpError(f"formulation {formulation!r}: choose one of {', '.join(FORMULATIONS)}")
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
    structure = None
    started = time.perf_counter()
    if formulation in ("auto", "hub"):
        structure = analyse(problem, latency_problem, blocks)
        if structure is None and formulation == "hub":
            raise MdpError("--formulation hub: this problem's shared dims have too many joint options to branch on; "
                           "use --formulation auto")
    if structure is not None:
        solver_info["formulation"] = "hub"
        solver_info["knapsack"] = knapsack
        solver_info["model_size"] = {"hub_dims": list(structure.hub), "hub_assignments": int(np.prod(structure.hub_shape)),
                                     "blocks": len(structure.groups),
                                     "configurations": int(sum(len(g.configs.latency) for g in structure.groups))}
        build_s = time.perf_counter() - started
        target = budget_value
        for _attempt in range(4):
            outcome = solve_decomposed(structure, problem, target, time_limit, threads, verbose, _run_highs, knapsack)
            if outcome.status == "infeasible":
                _raise_infeasible(problem, budget_value, decomposed_minimum_latency(structure), latency_model)
            if outcome.objective == -np.inf:
                raise MdpError("the time limit ran out before any configuration within the budget was found; "
                               "raise --time-limit")
            choice, kept = outcome.choice, outcome.kept
            check = latency_problem.latency(choice, kept)
            if check <= budget_value * (1 + 1e-9) + 1e-12:
                break
            target -= max(abs(target) * _BUDGET_RETRY_SHRINK, check - budget_value)
        else:
            raise MdpError("could not find a configuration within the budget within solver tolerances")
        solver_info["decomposition"] = {"knapsacks_solved": outcome.solved, "bounded_out": outcome.pruned,
                                        **{k: round(v, 4) for k, v in outcome.timings.items()}}
        timings = {"build_s": build_s, "solve_s": time.perf_counter() - started - build_s}
        value = problem.objective(choice, kept)
        gap = 0.0 if outcome.status == "optimal" else _relative_gap(value, outcome.bound)
        return make_solution(choice, kept, outcome.status, gap, outcome.bound if outcome.status != "optimal" else value,
                             timings, solver_info,
                             linear_latency=latency_problem.latency(choice, kept) if latency_model == "linear" else None)

    solver_info["formulation"] = "monolithic"
    form = build_formulation(problem, latency_problem, blocks_enabled=blocks, enumerate_blocks=formulation == "blocks")
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
            _raise_infeasible(problem, budget_value, minimum_latency(problem, latency_problem, blocks, threads=threads),
                              latency_model)
        if result.incumbent_objective is None:
            # Stopped before HiGHS found any configuration: fall back to the greedy one, with HiGHS's bound.
            fallback = greedy_solution(problem, budget_value, latency_problem, blocks)
            if fallback is None:
                raise MdpError(f"HiGHS stopped ({condition.name}) before finding any configuration within the "
                               f"budget; raise --time-limit")
            choice, kept = fallback
            value = problem.objective(choice, kept)
            bound = result.objective_bound
            solver_info["incumbent"] = "greedy"
            return make_solution(choice, kept, "time_limit", _relative_gap(value, bound), bound, timings, solver_info,
                                 linear_latency=latency_problem.latency(choice, kept) if latency_model == "linear" else None)
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


def _raise_infeasible(problem: Problem, budget_value: float, smallest: float, latency_model: str):
    raise InfeasibleBudgetError(
        f"budget {budget_value:.4g} {problem.units} is below the smallest reachable latency "
        f"{smallest:.4g} {problem.units} ({smallest / problem.dense_latency:.1%} of dense"
        f"{', linear model' if latency_model == 'linear' else ''}); raise --budget to at least that"
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


def _run_highs(model: pyo.ConcreteModel, time_limit, rel_gap, threads, verbose,
               extra_options: dict[str, Any] | None = None) -> tuple[Any, float]:
    solver = Highs()
    if not solver.available():
        raise MdpError("HiGHS is not available: pip install highspy")
    options: dict[str, Any] = {"mip_rel_gap": rel_gap, "mip_abs_gap": 0.0, **(extra_options or {})}
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
