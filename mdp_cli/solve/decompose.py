"""Exact hub decomposition: branch on the few dims that blocks share, solve a small knapsack per branch.

In a ViT every block meets the rest of the network only through the embedding dim E; in general a
block's dims split into *private* dims (used by that block alone) and *hub* dims (shared). Fixing the hub
dims leaves one independent choice per block, coupled only by the latency budget: a multiple-choice
knapsack (MCKP) whose items are each block's Pareto-optimal configurations (formulation._enumerate_block).

So: for every assignment of the hub dims, compute the MCKP's LP bound (greedy over the upper concave hull
of each block's front, the classic MCKP relaxation), visit assignments from the best bound down, solve
each one's MCKP exactly (a small Pyomo model, HiGHS, gap 0) and stop once the best solution found is at
least the next bound. Every assignment is either solved exactly or bounded below the incumbent, so the
result is the proven optimum of the whole program, the same as the monolithic MILP's.

Used when the hub is small (at most MAX_HUB_ASSIGNMENTS assignments) and each block's grid is small
enough to enumerate; otherwise the monolithic formulation is used.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections import defaultdict

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from mdp_cli.solve.formulation import MAX_ENUMERATED_CELLS, _BlockConfigs, _broadcast, _enumerate_block
from mdp_cli.solve.problem import Problem

MAX_HUB_ASSIGNMENTS = 4096


@dataclasses.dataclass
class _Group:
    """One block's configurations, split per value of its interface (hub) dims."""

    name: str
    removable: bool
    configs: _BlockConfigs
    fronts: dict[int, np.ndarray]  # interface flat index -> config row indices sorted by latency


@dataclasses.dataclass
class HubStructure:
    hub: tuple[str, ...]
    hub_shape: tuple[int, ...]
    groups: list[_Group]
    base_latency: np.ndarray  # per hub assignment: constant + hub-only terms
    base_importance: np.ndarray


def analyse(problem: Problem, latency_problem: Problem, blocks_enabled: bool) -> HubStructure | None:
    """Return the hub structure if the problem decomposes into a small hub plus per-block choices."""
    removable = {b.name for b in problem.blocks if b.removable and blocks_enabled}
    users: dict[str, set] = defaultdict(set)  # dim -> groups (block names, None for ungated)
    for term in latency_problem.terms:
        for d in term.dims:
            users[d].add(term.block)
    for entry in problem.importance:
        if np.ptp(entry.values) > 0 or entry.block is not None:
            users[entry.dim].add(entry.block)
    hub = tuple(d.name for d in problem.dims if d.name in users and (len(users[d.name]) > 1 or None in users[d.name]))
    hub_shape = tuple(len(problem.dim(d).options) for d in hub)
    if math.prod(hub_shape) > MAX_HUB_ASSIGNMENTS:
        return None

    groups: list[_Group] = []
    for block in problem.blocks:
        terms = [t for t in latency_problem.terms if t.block == block.name]
        entries = [e for e in problem.importance if e.block == block.name]
        if not terms and not entries:
            continue
        dims_used = {d for t in terms for d in t.dims} | {e.dim for e in entries}
        interface = tuple(d for d in hub if d in dims_used)
        private = tuple(sorted(dims_used - set(interface)))
        if math.prod(len(problem.dim(d).options) for d in dims_used) > MAX_ENUMERATED_CELLS:
            return None
        configs = _enumerate_block(block.name, interface, private, terms, entries, problem)
        fronts: dict[int, list] = defaultdict(list)
        for row, value in enumerate(configs.interface_index):
            fronts[int(value)].append(row)
        groups.append(_Group(block.name, block.name in removable, configs,
                             {k: np.asarray(v) for k, v in fronts.items()}))

    base_latency = np.full(hub_shape, latency_problem.constant_latency)
    base_importance = np.zeros(hub_shape)
    for term in latency_problem.terms:
        if term.block is None:
            base_latency = base_latency + _broadcast(term.table, term.dims, hub)
    for entry in problem.importance:
        if entry.block is None:  # ungated importance of a dim nothing else uses is constant: take it whole
            base_importance = base_importance + (
                _broadcast(entry.values, (entry.dim,), hub) if entry.dim in hub else entry.values[-1])
    return HubStructure(hub, hub_shape, groups, np.broadcast_to(base_latency, hub_shape).ravel(),
                        np.broadcast_to(base_importance, hub_shape).ravel())


def minimum_latency(structure: HubStructure) -> float:
    """Smallest reachable latency: per hub assignment, every block at its cheapest (or removed)."""
    best = math.inf
    for h, hub_index in enumerate(itertools.product(*(range(n) for n in structure.hub_shape))):
        total = structure.base_latency[h]
        for group in structure.groups:
            value = _interface_value(group, structure.hub, hub_index)
            _, latency, _ = _items(group, value)
            total += 0.0 if group.removable else (latency.min() if latency.size else math.inf)
        best = min(best, total)
    return best


def _interface_value(group: _Group, hub: tuple[str, ...], hub_index: tuple[int, ...]) -> int:
    shape = [group.configs.interface_shape[i] for i in range(len(group.configs.interface))]
    index = [hub_index[hub.index(d)] for d in group.configs.interface]
    return int(np.ravel_multi_index(index, shape)) if shape else 0


def _items(group: _Group, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = group.fronts.get(value, np.zeros(0, int))
    return rows, group.configs.latency[rows], group.configs.importance[rows]


def _lp_bound(groups_items, residual: float) -> float:
    """MCKP LP relaxation: each group starts at its cheapest allowed item, then the steepest hull
    segments across all groups are bought greedily, the last one fractionally."""
    value, spend = 0.0, 0.0
    segments = []
    for latency, importance, removable in groups_items:
        if removable:
            latency = np.concatenate([[0.0], latency])
            importance = np.concatenate([[0.0], importance])
        if latency.size == 0:
            return -math.inf
        spend += latency[0]
        value += importance[0]
        # Upper concave hull of the front (points sorted by latency, importance increasing).
        hull = [0]
        for i in range(1, latency.size):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                if (importance[b] - importance[a]) * (latency[i] - latency[a]) <= (importance[i] - importance[a]) * (latency[b] - latency[a]):
                    hull.pop()
                else:
                    break
            hull.append(i)
        for a, b in zip(hull, hull[1:]):
            d_lat, d_imp = latency[b] - latency[a], importance[b] - importance[a]
            segments.append((d_imp / d_lat if d_lat > 0 else math.inf, d_lat, d_imp))
    left = residual - spend
    if left < -1e-12:
        return -math.inf
    for _slope, d_lat, d_imp in sorted(segments, key=lambda s: -s[0]):
        if d_lat <= left:
            left -= d_lat
            value += d_imp
        else:
            value += d_imp * left / d_lat
            break
    return value


@dataclasses.dataclass
class DecomposedResult:
    choice: dict[str, int]
    kept: dict[str, bool]
    objective: float
    bound: float
    solved: int  # knapsacks solved exactly
    assignments: int  # hub assignments in total
    pruned: int  # assignments dismissed by their bound
    timings: dict[str, float]
    status: str  # optimal | time_limit | infeasible


def solve_decomposed(structure: HubStructure, problem: Problem, budget: float, time_limit: float | None,
                     threads: int | None, verbose: bool, run_highs) -> DecomposedResult:
    started = time.perf_counter()
    hub_assignments = list(itertools.product(*(range(n) for n in structure.hub_shape)))
    bounds = np.full(len(hub_assignments), -math.inf)
    per_assignment_items = []
    for h, hub_index in enumerate(hub_assignments):
        items = []
        for group in structure.groups:
            _, latency, importance = _items(group, _interface_value(group, structure.hub, hub_index))
            items.append((latency, importance, group.removable))
        per_assignment_items.append(items)
        residual = budget - structure.base_latency[h]
        if residual >= -1e-12:
            bounds[h] = structure.base_importance[h] + _lp_bound(items, residual)
    bound_s = time.perf_counter() - started

    order = np.argsort(-bounds, kind="stable")
    best_value, best = -math.inf, None
    solved = 0
    knapsack_s = 0.0
    status = "optimal"
    for h in order:
        if not math.isfinite(bounds[h]) or bounds[h] <= best_value + 1e-12 * max(1.0, abs(best_value)):
            break
        if time_limit is not None and time.perf_counter() - started > time_limit:
            status = "time_limit"
            break
        remaining = None if time_limit is None else max(1.0, time_limit - (time.perf_counter() - started))
        t0 = time.perf_counter()
        outcome = _solve_knapsack(structure, h, hub_assignments[h], budget, remaining, threads, verbose, run_highs,
                                  problem)
        knapsack_s += time.perf_counter() - t0
        solved += 1
        if outcome is not None and outcome[0] > best_value:
            best_value, best = outcome[0], (hub_assignments[h], outcome[1])
    if best is None:
        return DecomposedResult({}, {}, -math.inf, -math.inf, solved, len(hub_assignments), 0,
                                {"bound_s": bound_s, "knapsack_s": knapsack_s}, "infeasible" if status == "optimal" else status)
    remaining_bounds = [b for i, b in enumerate(bounds[order]) if i >= solved and math.isfinite(b)]
    overall_bound = max([best_value] + remaining_bounds[:1]) if status != "optimal" else best_value

    hub_index, picks = best
    choice = {d: problem.dim(d).full_index for d in (x.name for x in problem.dims)}
    for d, k in zip(structure.hub, hub_index):
        choice[d] = int(k)
    kept = {}
    for group, row in zip(structure.groups, picks):
        kept[group.name] = row is not None
        if row is not None:
            for d, k in zip(group.configs.private, group.configs.private_index[row]):
                choice[d] = int(k)
    return DecomposedResult(choice, kept, best_value, overall_bound, solved, len(hub_assignments),
                            len(hub_assignments) - solved, {"bound_s": bound_s, "knapsack_s": knapsack_s}, status)


def _solve_knapsack(structure, h, hub_index, budget, time_limit, threads, verbose, run_highs, problem):
    """Exact MCKP for one hub assignment: one item (or removal) per block within the residual budget."""
    model = pyo.ConcreteModel()
    model.pick = pyo.VarList(domain=pyo.Binary)
    model.rows = pyo.ConstraintList()
    lat_coefs, imp_coefs, variables, owners = [], [], [], []
    for g, group in enumerate(structure.groups):
        rows, latency, importance = _items(group, _interface_value(group, structure.hub, hub_index))
        picks = [model.pick.add() for _ in rows]
        if not picks and not group.removable:
            return None
        ones = [1.0] * len(picks)
        expr = LinearExpression(constant=0.0, linear_coefs=ones, linear_vars=picks)
        model.rows.add(expr <= 1 if group.removable else expr == 1)
        lat_coefs += latency.tolist()
        imp_coefs += importance.tolist()
        variables += picks
        owners += [(g, int(r)) for r in rows]
    residual = budget - structure.base_latency[h]
    model.budget = pyo.Constraint(expr=LinearExpression(constant=0.0, linear_coefs=lat_coefs, linear_vars=variables) <= residual)
    model.objective = pyo.Objective(expr=LinearExpression(constant=float(structure.base_importance[h]),
                                                          linear_coefs=imp_coefs, linear_vars=variables),
                                    sense=pyo.maximize)
    result, _ = run_highs(model, time_limit, 0.0, threads, verbose)
    if result.incumbent_objective is None:
        return None
    result.solution_loader.load_vars()
    picks: list = [None] * len(structure.groups)
    for var, (g, row) in zip(variables, owners):
        if var.value is not None and var.value > 0.5:
            picks[g] = row
    value = float(structure.base_importance[h]) + sum(
        imp for imp, var in zip(imp_coefs, variables) if var.value is not None and var.value > 0.5)
    return value, picks
