"""Solve a pruning problem to its proven optimum: the hub decomposition where it applies, else the
monolithic MILP (Pyomo model of formulation.py, solved by HiGHS)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from typing import Any, Callable

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.solver.common.results import TerminationCondition
from pyomo.contrib.solver.solvers.highs import Highs

from mdp_cli.artifacts import library_versions
from mdp_cli.errors import InfeasibleBudgetError, MdpError
from mdp_cli.solve.budget import parse_budget
from mdp_cli.solve.decompose import analyse, solve_decomposed
from mdp_cli.solve.decompose import minimum_latency as decomposed_minimum_latency
from mdp_cli.solve.formulation import build_formulation
from mdp_cli.solve.greedy import greedy_solution
from mdp_cli.solve.linear import linearize
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solution import Solution

LATENCY_MODELS = ("multidim", "linear")
# auto: hub decomposition where the shared dims allow it, else the monolithic MILP.
# blocks: the monolithic MILP with each block's Pareto configurations enumerated (an exact variant).
FORMULATIONS = ("auto", "hub", "monolithic", "blocks")
# Per-branch knapsacks of the hub decomposition: Pareto-state DP (exact, fast on near-ties) or HiGHS.
KNAPSACK_ENGINES = ("dp", "highs")
# HiGHS accepts a row as satisfied within its feasibility tolerance; when the exactly recomputed latency
# lands above the budget, the budget is tightened by at least this fraction and the search repeated, so
# "never over budget" holds exactly.
_BUDGET_RETRY_SHRINK = 1e-7


@dataclasses.dataclass
class _Outcome:
    """What one search returns: a configuration, how sure it is, and what it cost."""

    choice: dict[str, int]
    kept: dict[str, bool]
    status: str
    bound: float | None
    solve_s: float


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
    for value, allowed, what in ((knapsack, KNAPSACK_ENGINES, "knapsack engine"),
                                 (formulation, FORMULATIONS, "formulation"),
                                 (latency_model, LATENCY_MODELS, "latency model")):
        if value not in allowed:
            raise MdpError(f"{what} {value!r}: choose one of {', '.join(allowed)}")
    budget_value = parse_budget(budget, problem.dense_latency, problem.units)
    latency_problem = linearize(problem) if latency_model == "linear" else problem
    info: dict[str, Any] = {"versions": library_versions(), "time_limit": time_limit, "rel_gap": rel_gap,
                            "threads": threads}

    def finish(choice, kept, status, bound, timings) -> Solution:
        value = problem.objective(choice, kept)
        gap = 0.0 if status in ("optimal", "nothing_to_prune") else _relative_gap(value, bound)
        return Solution(
            problem_name=problem.name,
            problem_hash=problem.content_hash(),
            option_index=dict(choice),
            choice={d.name: d.options[choice[d.name]] for d in problem.dims},
            kept={b.name: bool(kept.get(b.name, True)) for b in problem.blocks},
            budget=budget_value,
            dense_latency=problem.dense_latency,
            predicted_latency=problem.latency(choice, kept),
            objective=value,
            dense_objective=problem.objective(problem.dense_choice()),
            status=status,
            gap=gap,
            bound=value if status in ("optimal", "nothing_to_prune") else bound,
            latency_model=latency_model,
            linear_latency=latency_problem.latency(choice, kept) if latency_model == "linear" else None,
            blocks_enabled=blocks,
            units=problem.units,
            timings=timings,
            solver=info,
        )

    if budget_value >= problem.dense_latency:
        # Importance never decreases with size, so the dense model is optimal once it fits.
        return finish(problem.dense_choice(), {}, "nothing_to_prune", None, {})

    started = time.perf_counter()
    structure = analyse(problem, latency_problem, blocks) if formulation in ("auto", "hub") else None
    if structure is None and formulation == "hub":
        raise MdpError("--formulation hub: the shared dims of this problem have too many joint options to "
                       "branch on; use --formulation auto")
    if structure is not None:
        info.update(formulation="hub", knapsack=knapsack, engine="dp" if knapsack == "dp" else "highs via pyomo",
                    model_size={"hub_dims": list(structure.hub),
                                "hub_assignments": int(np.prod(structure.hub_shape)),
                                "blocks": len(structure.groups),
                                "configurations": int(sum(len(g.configs.latency) for g in structure.groups))})

        def search(target: float) -> _Outcome:
            t0 = time.perf_counter()
            result = solve_decomposed(structure, problem, target, time_limit, threads, verbose, _run_highs, knapsack)
            if result.status == "infeasible":
                _raise_infeasible(problem, budget_value, decomposed_minimum_latency(structure), latency_model)
            if result.best is None:
                raise MdpError("the time limit ran out before any configuration within the budget was found; "
                               "raise --time-limit")
            info["decomposition"] = {"knapsacks_solved": result.solved, "bounded_out": result.pruned,
                                     **{k: round(v, 4) for k, v in result.timings.items()}}
            return _Outcome(result.choice, result.kept, result.status, result.bound, time.perf_counter() - t0)
    else:
        info.update(formulation="monolithic", engine="highs via pyomo")
        form = build_formulation(problem, latency_problem, blocks_enabled=blocks,
                                 enumerate_blocks=formulation == "blocks")
        model = form.model
        model.budget = pyo.Param(mutable=True, initialize=budget_value)
        model.latency_budget = pyo.Constraint(expr=form.latency_expression() <= model.budget)
        model.objective = pyo.Objective(expr=form.importance_expression(), sense=pyo.maximize)
        info["model_size"] = form.stats

        def search(target: float) -> _Outcome:
            model.budget.set_value(target)
            result, solve_s = _run_highs(model, time_limit, rel_gap, threads, verbose)
            condition = result.termination_condition
            if condition in (TerminationCondition.provenInfeasible, TerminationCondition.infeasibleOrUnbounded):
                _raise_infeasible(problem, budget_value,
                                  minimum_latency(problem, latency_problem, blocks, threads=threads), latency_model)
            if result.incumbent_objective is None:
                # Stopped before HiGHS found a configuration: the greedy one, with HiGHS's bound.
                fallback = greedy_solution(problem, budget_value, latency_problem, blocks)
                if fallback is None:
                    raise MdpError(f"HiGHS stopped ({condition.name}) before finding any configuration within the "
                                   f"budget; raise --time-limit")
                info["incumbent"] = "greedy"
                return _Outcome(*fallback, "time_limit", result.objective_bound, solve_s)
            result.solution_loader.load_vars()
            choice, kept = form.chosen()
            gap = _relative_gap(result.incumbent_objective, result.objective_bound)
            if condition != TerminationCondition.convergenceCriteriaSatisfied:
                status = "time_limit"
            else:
                status = "optimal" if gap is not None and gap <= max(rel_gap, 1e-9) else "gap_limit"
            return _Outcome(choice, kept, status, result.objective_bound, solve_s)

    build_s = time.perf_counter() - started
    outcome = _search_within_budget(search, latency_problem, budget_value)
    return finish(outcome.choice, outcome.kept, outcome.status, outcome.bound,
                  {"build_s": build_s, "solve_s": outcome.solve_s})


def _search_within_budget(search: Callable[[float], _Outcome], latency_problem: Problem, budget: float) -> _Outcome:
    """Run ``search`` and check the answer's latency exactly; on a tolerance-level overshoot tighten the
    budget a hair and search again."""
    target, spent = budget, 0.0
    for _attempt in range(4):
        outcome = search(target)
        spent += outcome.solve_s
        latency = latency_problem.latency(outcome.choice, outcome.kept)
        if latency <= budget * (1 + 1e-9) + 1e-12:
            outcome.solve_s = spent
            return outcome
        target -= max(abs(target) * _BUDGET_RETRY_SHRINK, latency - budget)
    raise MdpError("could not find a configuration within the budget within solver tolerances")


def minimum_latency(problem: Problem, latency_problem: Problem | None = None, blocks: bool = True,
                    threads: int | None = None) -> float:
    """The smallest latency any allowed configuration reaches (solved exactly, ignoring importance)."""
    latency_problem = latency_problem or problem
    structure = analyse(problem, latency_problem, blocks)
    if structure is not None:
        return decomposed_minimum_latency(structure)
    form = build_formulation(problem, latency_problem, blocks_enabled=blocks)
    form.model.objective = pyo.Objective(expr=form.latency_expression(), sense=pyo.minimize)
    result, _ = _run_highs(form.model, None, 0.0, threads, False)
    result.solution_loader.load_vars()
    choice, kept = form.chosen()
    return latency_problem.latency(choice, kept)


def _raise_infeasible(problem: Problem, budget_value: float, smallest: float, latency_model: str):
    raise InfeasibleBudgetError(
        f"budget {budget_value:.4g} {problem.units} is below the smallest reachable latency "
        f"{smallest:.4g} {problem.units} ({smallest / problem.dense_latency:.1%} of dense"
        f"{', linear model' if latency_model == 'linear' else ''}); raise --budget to at least that"
    )


def _run_highs(model: pyo.ConcreteModel, time_limit, rel_gap, threads, verbose,
               extra_options: dict[str, Any] | None = None) -> tuple[Any, float]:
    solver = Highs()
    if not solver.available():
        raise MdpError("HiGHS is not available: pip install highspy")
    options: dict[str, Any] = {"mip_rel_gap": rel_gap, "mip_abs_gap": 0.0, **(extra_options or {})}
    started = time.perf_counter()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        result = solver.solve(model, tee=verbose, time_limit=time_limit, threads=threads, load_solutions=False,
                              raise_exception_on_nonoptimal_result=False, solver_options=options)
    return result, time.perf_counter() - started


def _relative_gap(incumbent: float | None, bound: float | None) -> float | None:
    if incumbent is None or bound is None or not math.isfinite(bound):
        return None
    return abs(bound - incumbent) / max(abs(incumbent), 1e-10)
