"""Solve a pruning problem to its proven optimum: the hub decomposition where it applies, else the
monolithic MILP (Pyomo model of formulation.py, solved by HiGHS)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import signal
import threading
import time
from typing import Any, Callable, Sequence

from mdp_cli.artifacts import library_versions
from mdp_cli.errors import InfeasibleBudgetError, MdpError
from mdp_cli.solve.budget import parse_budget
from mdp_cli.solve.constraints import Constraints, restrict
from mdp_cli.solve.decompose import BUDGET_SLACK, Incumbent, analyse, solve_decomposed
from mdp_cli.solve.decompose import minimum_latency as decomposed_minimum_latency
from mdp_cli.solve.linear import linearize
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solution import Solution

# Pyomo and HiGHS are imported where a model is built: the hub decomposition with the DP knapsack (the
# default for CNNs and ViTs) needs neither, and importing pyomo.environ costs ~0.6 s of start-up.

LATENCY_MODELS = ("multidim", "linear")
# auto: hub decomposition where the shared dims allow it, else the monolithic MILP.
# blocks: the monolithic MILP with each block's Pareto configurations enumerated (an exact variant).
FORMULATIONS = ("auto", "hub", "monolithic", "blocks")
# Per-branch knapsacks of the hub decomposition: Pareto-state DP (exact, fast on near-ties) or HiGHS.
KNAPSACK_ENGINES = ("dp", "highs")
# With caps, options that the Lagrangian bounds at the LP's duals rule out are fixed out of HiGHS's model
# (fixing.py): first against a target this far (relative) below the LP bound, then, if the reduced model's
# optimum falls short of it, against that optimum (exact either way).
LAGRANGIAN_FIXING = True
FIXING_TARGET_GAP = 2e-4


@dataclasses.dataclass
class _Outcome:
    """What one search returns: a configuration, how sure it is, and what it cost."""

    choice: dict[str, int]
    kept: dict[str, bool]
    status: str
    bound: float | None
    solve_s: float
    incumbent: Incumbent | None = None


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
    max_params: float | str | None = None,
    max_flops: float | str | None = None,
    min_keep: float | None = None,
    multiple: int | None = None,
) -> Solution:
    """Maximise kept importance subject to predicted latency <= budget (and, optionally, total params and
    FLOPs caps, every dim at least ``min_keep`` of its size, every width a multiple of ``multiple``; these
    are solved exactly in the Pyomo model by HiGHS, after checking whether the latency-only optimum already
    meets them).

    ``budget`` is a fraction of the dense latency (0.5), a percentage ("50%") or an absolute latency
    ("3.5ms"). Returns the proven optimum (gap 0) unless ``time_limit`` stops the search first, in
    which case the best solution found and its gap are returned. Raises InfeasibleBudgetError naming the
    smallest reachable latency when no configuration fits.
    """
    solver = PreparedSolver(problem, latency_model=latency_model, blocks=blocks, time_limit=time_limit,
                            rel_gap=rel_gap, threads=threads, verbose=verbose, formulation=formulation,
                            knapsack=knapsack, constraints=Constraints.from_options(max_params, max_flops,
                                                                                    min_keep, multiple))
    return solver.solve(parse_budget(budget, problem.dense_latency, problem.units))


def solve_budgets(problem: Problem, budgets: Sequence[str | float], **options: Any) -> list[Solution | MdpError]:
    """Solve one problem at several budgets, reusing work: the model (hub structure and block Pareto
    fronts, or the Pyomo model) is built once, and budgets are solved from the smallest up, each search
    starting from the optimum of the budget below it (still feasible, so a lower bound that dismisses
    most hub assignments unsolved). Returns, in the order given, a Solution or the error of that budget
    (InfeasibleBudgetError for an unreachable one). ``options`` are those of solve_problem."""
    values = [parse_budget(b, problem.dense_latency, problem.units) for b in budgets]
    limits = {k: options.pop(k) for k in ("max_params", "max_flops", "min_keep", "multiple") if k in options}
    solver = PreparedSolver(problem, constraints=Constraints.from_options(**limits), **options)
    results: list[Solution | MdpError | None] = [None] * len(values)
    incumbent = None
    for i in sorted(range(len(values)), key=lambda i: values[i]):
        try:
            results[i] = solver.solve(values[i], incumbent)
        except InfeasibleBudgetError as exc:
            results[i] = exc
            continue
        incumbent = solver.last_incumbent if results[i].status == "optimal" else incumbent
    return results  # type: ignore[return-value]


class PreparedSolver:
    """A problem made ready to solve at any budget: options checked, model built on first use."""

    def __init__(self, problem: Problem, *, latency_model: str = "multidim", blocks: bool = True,
                 time_limit: float | None = None, rel_gap: float = 0.0, threads: int | None = None,
                 verbose: bool = False, formulation: str = "auto", knapsack: str = "dp",
                 constraints: Constraints | None = None):
        for value, allowed, what in ((knapsack, KNAPSACK_ENGINES, "knapsack engine"),
                                     (formulation, FORMULATIONS, "formulation"),
                                     (latency_model, LATENCY_MODELS, "latency model")):
            if value not in allowed:
                raise MdpError(f"{what} {value!r}: choose one of {', '.join(allowed)}")
        self.constraints = constraints or Constraints()
        if self.constraints.active:
            if latency_model != "multidim":
                raise MdpError("constraints beside the budget need --latency-model multidim")
            self.constraints.check_problem(problem)
        self._latency_only: PreparedSolver | None = None
        self.problem = problem
        self.latency_model, self.blocks, self.formulation, self.knapsack = latency_model, blocks, formulation, knapsack
        self.time_limit, self.rel_gap, self.threads, self.verbose = time_limit, rel_gap, threads, verbose
        self.latency_problem = linearize(problem) if latency_model == "linear" else problem
        self.info: dict[str, Any] = {"versions": library_versions(), "time_limit": time_limit, "rel_gap": rel_gap,
                                     "threads": threads}
        self._hash: str | None = None  # the problem's content hash, computed once (0.2 s for DeiT-Base)
        self._search: Callable[[float, Incumbent | None, float], _Outcome] | None = None
        self._smallest: Callable[[], float] | None = None
        self.build_s = 0.0
        self.last_incumbent: Incumbent | None = None

    def solve(self, budget_value: float, incumbent: Incumbent | None = None) -> Solution:
        """The optimum within ``budget_value`` (in the problem's units). ``incumbent``: a configuration of
        an earlier solve of this object known to fit this budget (the optimum of a smaller budget)."""
        problem, constraints = self.problem, self.constraints
        if budget_value >= problem.dense_latency and (
                not constraints.active or constraints.satisfied(problem, problem.dense_choice(), {})):
            # Importance never decreases with size, so the dense model is optimal once it fits.
            return self._finish(budget_value, problem.dense_choice(), {}, "nothing_to_prune", None, {})
        if constraints.active:
            # Constraints only remove configurations: a latency-only optimum that meets them is the optimum.
            if self._latency_only is None:
                self._latency_only = PreparedSolver(problem, blocks=self.blocks, time_limit=self.time_limit,
                                                    rel_gap=self.rel_gap, threads=self.threads, verbose=self.verbose,
                                                    knapsack=self.knapsack)
            unconstrained = self._latency_only.solve(budget_value, incumbent)
            self.last_incumbent = None
            if unconstrained.status == "optimal" and constraints.satisfied(problem, unconstrained.option_index,
                                                                           unconstrained.kept):
                unconstrained.solver["constraints"] = {"met_by": "the latency-only optimum",
                                                       **dataclasses.asdict(constraints)}
                return unconstrained
            incumbent = None
        build_s = 0.0
        if self._search is None:
            started = time.perf_counter()
            self._build()
            build_s = self.build_s = time.perf_counter() - started
        outcome = _search_within_budget(self._search, self.latency_problem, budget_value, incumbent)
        if constraints.active:
            how = "the hub decomposition" if self.info.get("formulation") == "hub" else "the monolithic MILP"
            self.info["constraints"] = {"met_by": how, **dataclasses.asdict(constraints)}
        self.last_incumbent = outcome.incumbent
        return self._finish(budget_value, outcome.choice, outcome.kept, outcome.status, outcome.bound,
                            {"build_s": build_s, "solve_s": outcome.solve_s})

    def _finish(self, budget_value, choice, kept, status, bound, timings) -> Solution:
        problem, latency_problem = self.problem, self.latency_problem
        value = problem.objective(choice, kept)
        gap = 0.0 if status in ("optimal", "nothing_to_prune") else _relative_gap(value, bound)
        return Solution(
            problem_name=problem.name,
            problem_hash=self._content_hash(),
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
            latency_model=self.latency_model,
            linear_latency=latency_problem.latency(choice, kept) if self.latency_model == "linear" else None,
            blocks_enabled=self.blocks,
            units=problem.units,
            timings=timings,
            solver=dict(self.info),
        )

    def _content_hash(self) -> str:
        if self._hash is None:
            self._hash = self.problem.content_hash()
        return self._hash

    def _raise_infeasible(self, budget_value: float):
        _raise_infeasible(self.problem, budget_value, self._smallest(), self.latency_model)

    def _build(self) -> None:
        problem, latency_problem = self.problem, self.latency_problem
        formulation = self.formulation
        constraints = self.constraints
        if constraints.active and (formulation == "hub" or (formulation == "auto" and not constraints.caps())):
            # The search runs on the problem cut down to the allowed options, its answers mapped back. Caps
            # go to the monolithic MILP unless the hub search is asked for: the branch and bound with a
            # HiGHS knapsack per branch is exact with caps too, but its multi-capacity bounds are weak
            # (ResNet-50 at paper granularity, params and FLOPs capped: hundreds of branches, slower than
            # the MILP).
            restricted, keep = restrict(problem, constraints.allowed(problem))
            structure = analyse(restricted, restricted, self.blocks, tuple(sorted(constraints.caps())))
        else:
            keep = None
            structure = (analyse(problem, latency_problem, self.blocks)
                         if formulation in ("auto", "hub") and not constraints.active else None)
        if structure is None and formulation == "hub":
            raise MdpError("--formulation hub: the shared dims of this problem have too many joint options to "
                           "branch on; use --formulation auto")
        if structure is not None:
            self._build_hub(structure, keep)
        else:
            self._build_monolithic()

    def _build_hub(self, structure, keep: dict[str, list[int]] | None = None) -> None:
        problem, info, knapsack = self.problem, self.info, self.knapsack
        search_problem = structure.problem
        caps = self.constraints.caps()
        info.update(formulation="hub", knapsack=knapsack, engine="dp" if knapsack == "dp" else "highs via pyomo",
                    model_size={"hub_dims": list(structure.hub),
                                "hub_assignments": structure.assignments,
                                "blocks": len(structure.groups),
                                "enumerated_configurations": int(sum(len(g.configs.latency) for g in structure.groups
                                                                     if g.configs is not None)),
                                "lazily_enumerated_blocks": sum(g.configs is None for g in structure.groups)})
        self._smallest = lambda: decomposed_minimum_latency(structure)

        def search(target: float, incumbent: Incumbent | None, budget_value: float) -> _Outcome:
            t0 = time.perf_counter()
            limits = dict(caps)
            for attempt in range(6):  # HiGHS accepts rows within its tolerance: keep the caps exact
                result = search_once(target, incumbent, budget_value, limits)
                if keep is not None:  # back to the original option indices
                    result.choice = {d: keep[d][k] for d, k in result.choice.items()}
                over = {name: problem.resource(name, result.choice, result.kept) - cap for name, cap in caps.items()}
                if all(v <= 0 for v in over.values()):
                    break
                for name, excess in over.items():
                    if excess > 0:
                        limits[name] -= (excess + 1e-9 * caps[name]) * 2 ** attempt
            else:
                raise MdpError("could not meet the caps within solver tolerances")
            info["decomposition"] = {"knapsacks_solved": result.solved, "bounded_out": result.pruned,
                                     "warm_start": incumbent is not None,
                                     **{k: round(v, 4) for k, v in result.timings.items()}}
            return _Outcome(result.choice, result.kept, result.status, result.bound, time.perf_counter() - t0,
                            result.incumbent)

        def search_once(target, incumbent, budget_value, limits):
            result = solve_decomposed(structure, search_problem, target, self.time_limit, self.threads, self.verbose,
                                      _run_highs, knapsack, search_problem if keep is not None else self.latency_problem,
                                      incumbent, limits)
            if result.status == "infeasible":
                if caps or keep is not None:
                    raise InfeasibleBudgetError(
                        f"no configuration meets the budget {budget_value:.4g} {problem.units} together with "
                        f"{self.constraints.describe()}; raise the budget or relax a constraint")
                self._raise_infeasible(budget_value)
            if result.best is None:
                raise MdpError("the time limit ran out before any configuration within the budget was found; "
                               "raise --time-limit")
            return result

        self._search = search

    def _build_monolithic(self) -> None:
        import pyomo.environ as pyo
        from pyomo.contrib.solver.common.results import TerminationCondition

        from mdp_cli.solve.formulation import build_formulation
        from mdp_cli.solve.greedy import greedy_solution

        problem, latency_problem, info, constraints = self.problem, self.latency_problem, self.info, self.constraints
        info.update(formulation="monolithic", engine="highs via pyomo")
        caps = constraints.caps()
        base_allowed = constraints.allowed(problem) if constraints.active else {}
        # The budget and caps the next HiGHS run gets (the search lowers them by solver tolerances).
        limits: dict[str, Any] = {"budget": problem.dense_latency, "caps": dict(caps)}

        def build(model_problem: Problem, model_latency: Problem, allowed: dict[str, set[int]], kept=None):
            form = build_formulation(model_problem, model_latency, blocks_enabled=self.blocks,
                                     enumerate_blocks=self.formulation == "blocks", resources=tuple(caps),
                                     allowed=allowed or None)
            model = form.model
            model.budget = pyo.Param(mutable=True, initialize=model_problem.dense_latency)
            model.latency_budget = pyo.Constraint(expr=form.latency_expression() <= model.budget)
            model.cap = pyo.Param(list(caps), mutable=True, initialize=caps)
            model.caps = pyo.Constraint(list(caps), rule=lambda m, name: form.resource_expression(name) <= m.cap[name])
            model.objective = pyo.Objective(expr=form.importance_expression(), sense=pyo.maximize)
            for block, keep in (kept or {}).items():
                if block in form.kappa:
                    form.kappa[block].fix(1 if keep else 0)
            return form

        whole: dict[str, Any] = {}  # the model of the whole problem, built when first needed

        def whole_form():
            if "form" not in whole:
                whole["form"] = build(problem, latency_problem, base_allowed)
                info["model_size"] = whole["form"].stats
            return whole["form"]

        if not caps or not LAGRANGIAN_FIXING:
            whole_form()
        self._smallest = lambda: minimum_latency(problem, latency_problem, self.blocks, threads=self.threads)

        def search(target: float, incumbent: Incumbent | None, budget_value: float) -> _Outcome:
            limits["budget"] = target
            for attempt in range(6):  # HiGHS accepts rows within its tolerance: keep the caps exact
                outcome = solve_with_bounds(budget_value)
                over = {name: problem.resource(name, outcome.choice, outcome.kept) - cap for name, cap in caps.items()}
                if all(v <= 0 for v in over.values()):
                    break
                for name, excess in over.items():
                    if excess > 0:
                        limits["caps"][name] -= (excess + 1e-9 * caps[name]) * 2 ** attempt
            else:
                raise MdpError("could not meet the caps within solver tolerances")
            limits["caps"] = dict(caps)
            return outcome

        fixing_hub: dict = {}  # the hub structure with counts, built on the first capped solve

        def solve_with_bounds(budget_value: float) -> _Outcome:
            """With caps: the hub Lagrangian (latency and every count relaxed) bounds, per option, every
            configuration that uses it (fixing.py), at multipliers that minimise its dual value. Options
            below a target just under that bound are left out and HiGHS solves a model of what is left; an
            optimum there that reaches the target is the optimum (every better configuration was left in).
            Otherwise that optimum, a configuration that fits, is the value to fix against, and HiGHS
            solves again from it."""
            import numpy as np

            from mdp_cli.solve.fixing import fit_multipliers, fix_by_bounds, hub_for_fixing

            if not caps or not LAGRANGIAN_FIXING:
                return solve_once(whole_form(), budget_value)
            if "hub" not in fixing_hub:
                fixing_hub["hub"] = hub_for_fixing(problem, tuple(caps), self.blocks)
            hub = fixing_hub["hub"]
            if hub is None:  # no hub to bound with
                return solve_once(whole_form(), budget_value)
            limit, current = limits["budget"], dict(limits["caps"])
            upper, duals = fit_multipliers(hub, np.array([limit * (1 + BUDGET_SLACK)] +
                                                         [current[name] for name in hub.resources]))
            target = upper - FIXING_TARGET_GAP * max(1.0, abs(upper))
            rounds, start = [], None
            for _ in range(3):
                fixing = fix_by_bounds(hub, limit, current, target, duals)
                round_info = {"target": target, "options_fixed": None if fixing is None else fixing.removed_options(problem)}
                rounds.append(round_info)
                info["fixing"] = {"dual_bound": upper, "rounds": rounds}
                outcome = (solve_once(whole_form(), budget_value, start=start) if fixing is None
                           else solve_left(fixing, budget_value, start, round_info))
                if outcome is None:  # nothing at or above the target: fix against less
                    target = upper - 10 * (upper - target)
                    continue
                if outcome.status != "optimal":  # stopped early: whatever was fixed out is below the target
                    outcome.bound = max(outcome.bound if outcome.bound is not None else -math.inf, target)
                    return outcome
                value = problem.objective(outcome.choice, outcome.kept)
                if value >= target or fixing is None:
                    return outcome
                if latency_problem.latency(outcome.choice, outcome.kept) > limit or any(
                        problem.resource(name, outcome.choice, outcome.kept) > cap for name, cap in current.items()):
                    break  # (over a row by HiGHS's tolerance: not a value to fix against)
                target, start = value, (outcome.choice, outcome.kept)  # every better one is left in
            return solve_once(whole_form(), budget_value)

        def solve_left(fixing, budget_value: float, start, round_info: dict) -> _Outcome | None:
            """HiGHS on a model of only the options ``fixing`` leaves (and the constraints allow), built
            anew: on a ViT the whole model is 150k joint variables and most of the time goes into building
            it and passing it to HiGHS. Each dim keeps its full option in the cut-down problem (its size is
            the last option) but it is fixed out where ruled out. None if nothing is left."""
            allowed = {}
            for dim in problem.dims:
                options = set(range(len(dim.options)))
                for rule in (fixing.allowed, base_allowed):
                    if dim.name in rule:
                        options &= rule[dim.name]
                if not options:
                    return None
                allowed[dim.name] = options
            cut, keep = restrict(problem, {d: options | {problem.dim(d).full_index} for d, options in allowed.items()})
            cut_latency = cut if latency_problem is problem else restrict(
                latency_problem, {d: set(k) for d, k in keep.items()})[0]
            position = {d: {k: i for i, k in enumerate(indices)} for d, indices in keep.items()}
            cut_allowed = {d: {position[d][k] for k in options} for d, options in allowed.items()
                           if len(options) < len(keep[d])}
            form = build(cut, cut_latency, cut_allowed, fixing.kept)
            round_info["model_size"] = form.stats
            info.setdefault("model_size", form.stats)
            if start is not None:
                choice, kept = start
                start = ({d: position[d][k] for d, k in choice.items()}, kept)
            outcome = solve_once(form, budget_value, start=start, cut=True)
            if outcome is not None:
                outcome.choice = {d: keep[d][k] for d, k in outcome.choice.items()}
            return outcome

        def start_values(form, start) -> list | None:
            if start is None:
                return None
            choice, kept = start
            values = [(var, float(k == choice[dim])) for dim, variables in form.x.items()
                      for k, var in enumerate(variables) if not var.fixed]
            values += [(var, float(kept.get(block, True))) for block, var in form.kappa.items() if not var.fixed]
            return values

        def solve_once(form, budget_value: float, start=None, cut: bool = False) -> _Outcome | None:
            """HiGHS on ``form`` at the current budget and caps (a ``cut`` model with nothing in it that
            fits: None)."""
            model = form.model
            model.budget.set_value(limits["budget"])
            for name, cap in limits["caps"].items():
                model.cap[name].set_value(cap)
            result, solve_s = _run_highs(model, self.time_limit, self.rel_gap, self.threads, self.verbose,
                                         start=start_values(form, start))
            condition = result.termination_condition
            if condition in (TerminationCondition.provenInfeasible, TerminationCondition.infeasibleOrUnbounded):
                if cut:
                    return None
                if constraints.active:
                    raise InfeasibleBudgetError(
                        f"no configuration meets the budget {budget_value:.4g} {problem.units} together with "
                        f"{constraints.describe()}; raise the budget or relax a constraint")
                self._raise_infeasible(budget_value)
            if result.incumbent_objective is None:
                # Stopped before HiGHS found a configuration: the greedy one, with HiGHS's bound.
                fallback = None if constraints.active else greedy_solution(problem, budget_value, latency_problem,
                                                                             self.blocks)
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
                status = "optimal" if gap is not None and gap <= max(self.rel_gap, 1e-9) else "gap_limit"
            return _Outcome(choice, kept, status, result.objective_bound, solve_s)

        self._search = search


def _search_within_budget(search, latency_problem: Problem, budget: float,
                          incumbent: Incumbent | None = None) -> _Outcome:
    """Run ``search`` and check the answer's latency exactly (a correctly rounded sum, <= budget). A solver
    may accept a row within its tolerance (HiGHS: about 1e-7 absolute); then the budget is tightened by the
    overshoot and the search repeated, so "never over budget" holds exactly."""
    target, spent = budget, 0.0
    for attempt in range(6):
        outcome = search(target, incumbent, budget)
        spent += outcome.solve_s
        latency = latency_problem.latency(outcome.choice, outcome.kept)
        if latency <= budget:
            outcome.solve_s = spent
            return outcome
        target = budget - (latency - budget + BUDGET_SLACK * abs(budget)) * 2 ** attempt
    raise MdpError("could not find a configuration within the budget within solver tolerances")


def minimum_latency(problem: Problem, latency_problem: Problem | None = None, blocks: bool = True,
                    threads: int | None = None) -> float:
    """The smallest latency any allowed configuration reaches (solved exactly, ignoring importance)."""
    latency_problem = latency_problem or problem
    structure = analyse(problem, latency_problem, blocks)
    if structure is not None:
        return decomposed_minimum_latency(structure)
    import pyomo.environ as pyo

    from mdp_cli.solve.formulation import build_formulation

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


def _run_highs(model, time_limit, rel_gap, threads, verbose, extra_options: dict[str, Any] | None = None,
               start: list | None = None) -> tuple[Any, float]:
    """Solve ``model`` by a new HiGHS. ``start`` ((Pyomo variable, value) pairs: the binaries of a
    configuration known to be feasible): HiGHS's first incumbent (it completes the continuous variables
    by one LP)."""
    solver = _new_highs()
    options: dict[str, Any] = {"mip_rel_gap": rel_gap, "mip_abs_gap": 0.0, "solve_relaxation": False,
                               "time_limit": math.inf if time_limit is None else time_limit, **(extra_options or {})}
    started = time.perf_counter()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet, _interruptible(solver) as interrupted, _quiet_unhandled_status(), _started_from(solver, start):
        result = solver.solve(model, tee=verbose, threads=threads, load_solutions=False,
                              raise_exception_on_nonoptimal_result=False, solver_options=options)
    if interrupted:
        # HiGHS stops at Ctrl-C and reports a status like a time limit; the user asked to stop, not for
        # a partial answer, so the interrupt goes on (the CLI exits 130 and writes nothing).
        raise KeyboardInterrupt
    return result, time.perf_counter() - started


def _new_highs():
    from pyomo.contrib.solver.solvers.highs import Highs

    solver = Highs()
    if not solver.available():
        raise MdpError("HiGHS is not available: pip install highspy")
    return solver


@contextlib.contextmanager
def _started_from(solver, start: list | None):
    """Hand HiGHS a MIP start once Pyomo has passed it the model (right before it runs). Pyomo's HiGHS
    interface has no option for it, so its run step is wrapped for this call; variables that are not
    columns are skipped."""
    if not start:
        yield
        return
    import numpy as np

    run = solver._solve

    def run_from_start():
        columns = solver._pyomo_var_to_solver_var_map
        pairs = [(columns[id(var)], value) for var, value in start if id(var) in columns]
        if pairs:
            index, values = zip(*pairs)
            solver._solver_model.setSolution(len(index), np.array(index, dtype=np.int32), np.array(values, dtype=float))
        return run()

    solver._solve = run_from_start
    try:
        yield
    finally:
        del solver._solve  # back to the class's


@contextlib.contextmanager
def _interruptible(solver):
    """While HiGHS runs, Ctrl-C asks it to stop (at its next callback) and is recorded; the caller raises
    KeyboardInterrupt afterwards. Without this, the KeyboardInterrupt raised inside a HiGHS callback is
    swallowed and the solve ends as if a time limit had been hit."""
    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(_signum, frame):
        if not _inside_highs_callback(frame):
            raise KeyboardInterrupt  # in Python code (building or loading the model): stop right here
        # Inside HiGHS (Python runs only in its callbacks, where an exception would be swallowed): ask it
        # to stop at the next callback and raise once it has returned.
        interrupted.append(True)
        highs = getattr(solver, "_solver_model", None)
        if highs is not None and hasattr(highs, "cancelSolve"):
            highs.cancelSolve()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_unhandled_status():
    """Pyomo warns of HiGHS's 'interrupted' status, which it does not know; we handle it ourselves."""
    import logging

    logger = logging.getLogger("pyomo.contrib.solver.solvers.highs")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _inside_highs_callback(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("__internal_callback", "fire") and code.co_filename.replace("\\", "/").endswith("highspy/highs.py"):
            return True
        frame = frame.f_back
    return False


def _relative_gap(incumbent: float | None, bound: float | None) -> float | None:
    if incumbent is None or bound is None or not math.isfinite(bound):
        return None
    return abs(bound - incumbent) / max(abs(incumbent), 1e-10)
