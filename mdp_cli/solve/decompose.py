"""Exact hub decomposition: branch on the few dims that blocks share, solve a small knapsack per branch.

In a ViT every block meets the rest of the network only through the embedding dim E; in general a
block's dims split into *private* dims (used by that block alone) and *hub* dims (shared). Fixing the hub
dims leaves one independent choice per block, coupled only by the latency budget: a multiple-choice
knapsack (MCKP) whose items are each block's Pareto-optimal configurations (configurations.enumerate_block).

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
import heapq
import math
import time
from collections import defaultdict

import numpy as np

from mdp_cli.solve.configurations import MAX_ENUMERATED_CELLS, BlockConfigs, broadcast, enumerate_block
from mdp_cli.solve.knapsack import KnapsackGroup, lp_bound, solve_mckp
from mdp_cli.solve.problem import Problem

MAX_HUB_ASSIGNMENTS = 2_000_000
# Hubs up to this many assignments get the exact LP bound of each up front; larger ones get vectorised
# Lagrangian bounds first and the exact LP bound only when an assignment comes up for solving (computing
# every exact bound up front was 94-99 % of the solve time on ResNet-101-sized problems).
EXACT_BOUNDS_UP_TO = 16
_LAGRANGE_MULTIPLIERS = 48
_KEPT_VALUES = 4_000_000  # multipliers x assignments held at once (32 MB)
# Relative to the budget: far above the rounding error of summing a few thousand latencies in any order
# (~1e-13), far below any latency difference a measurement can resolve. Candidates in the band are
# checked with the exact (correctly rounded) latency.
BUDGET_SLACK = 1e-9


@dataclasses.dataclass
class _Group:
    """One block's configurations, split per value of its interface (hub) dims."""

    name: str
    removable: bool
    configs: BlockConfigs
    fronts: dict[int, np.ndarray]  # interface flat index -> config row indices sorted by latency


@dataclasses.dataclass
class HubStructure:
    hub: tuple[str, ...]
    hub_shape: tuple[int, ...]
    groups: list[_Group]
    base_latency: np.ndarray  # per hub assignment: constant + hub-only terms
    base_importance: np.ndarray
    # Reused across hub assignments and budgets: knapsack groups (with their hulls) per (block, interface
    # value), and the Lagrangian per-block maxima at the coarse multipliers.
    knapsack_groups: dict = dataclasses.field(default_factory=dict)
    coarse_multipliers: np.ndarray | None = None
    coarse_tables: list | None = None
    coarse_values: np.ndarray | None = None  # (multiplier, assignment): the budget-free Lagrangian


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
    # A dim that only ungated terms use (the widths inside a fixed, unremovable part: a MobileNet block
    # that changes the resolution, the head) is private to that part, not a hub dim: ungated terms that
    # share such dims form one fixed pseudo-block, whose other dims are its interface.
    fixed_only = {d for d, who in users.items() if who == {None}}
    parts = _fixed_parts(latency_problem, fixed_only)
    hub = tuple(d.name for d in problem.dims if d.name in users and d.name not in fixed_only
                and (len(users[d.name]) > 1 or None in users[d.name]))
    hub_shape = tuple(len(problem.dim(d).options) for d in hub)
    if math.prod(hub_shape) > MAX_HUB_ASSIGNMENTS:
        return None

    in_parts = {id(t) for terms, _ in parts for t in terms}
    units = [(block.name, [t for t in latency_problem.terms if t.block == block.name],
              [e for e in problem.importance if e.block == block.name]) for block in problem.blocks]
    units += [(f"<fixed {min(dims)}>", terms, [e for e in problem.importance if e.block is None and e.dim in dims])
              for terms, dims in parts]
    groups: list[_Group] = []
    for name, terms, entries in units:
        if not terms and not entries:
            continue
        dims_used = {d for t in terms for d in t.dims} | {e.dim for e in entries}
        interface = tuple(d for d in hub if d in dims_used)
        private = tuple(sorted(dims_used - set(interface)))
        if math.prod(len(problem.dim(d).options) for d in dims_used) > MAX_ENUMERATED_CELLS:
            return None
        configs = enumerate_block(name, interface, private, terms, entries, problem)
        # Rows come grouped by interface value (enumerate_block): split them at each change.
        index = configs.interface_index
        starts = np.flatnonzero(np.concatenate([[True], index[1:] != index[:-1]])) if index.size else np.zeros(0, int)
        fronts = dict(zip(index[starts].tolist(), np.split(np.arange(index.size), starts[1:])))
        groups.append(_Group(name, name in removable, configs, fronts))

    base_latency = np.full(hub_shape, latency_problem.constant_latency)
    base_importance = np.zeros(hub_shape)
    for term in latency_problem.terms:
        if term.block is None and id(term) not in in_parts:
            base_latency = base_latency + broadcast(term.table, term.dims, hub)
    for entry in problem.importance:
        if entry.block is None and entry.dim not in fixed_only:
            # ungated importance of a dim nothing else uses is constant: take it whole
            base_importance = base_importance + (
                broadcast(entry.values, (entry.dim,), hub) if entry.dim in hub else entry.values[-1])
    return HubStructure(hub, hub_shape, groups, np.broadcast_to(base_latency, hub_shape).ravel(),
                        np.broadcast_to(base_importance, hub_shape).ravel())


def _fixed_parts(latency_problem: Problem, fixed_only: set[str]) -> list[tuple[list, set[str]]]:
    """Ungated terms grouped by the fixed-only dims they share (connected components): (terms, dims)."""
    parent = {d: d for d in fixed_only}

    def root(d: str) -> str:
        while parent[d] != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    touching = [t for t in latency_problem.terms if t.block is None and fixed_only & set(t.dims)]
    for term in touching:
        own = [d for d in term.dims if d in fixed_only]
        for d in own[1:]:
            parent[root(d)] = root(own[0])
    parts: dict[str, tuple[list, set[str]]] = {}
    for term in touching:
        key = root(next(d for d in term.dims if d in fixed_only))
        parts.setdefault(key, ([], set()))[0].append(term)
    for d in fixed_only:
        if root(d) in parts:
            parts[root(d)][1].add(d)
    return list(parts.values())


def minimum_latency(structure: HubStructure) -> float:
    """Smallest reachable latency: the best hub assignment with every block at its cheapest (or removed)."""
    total = structure.base_latency.reshape(structure.hub_shape) if structure.hub_shape else structure.base_latency[0]
    for group in structure.groups:
        cheapest = _per_interface_value(group, np.inf, group.configs.latency, np.minimum)
        if group.removable:
            cheapest = np.zeros_like(cheapest)
        total = total + broadcast(cheapest, group.configs.interface, structure.hub)
    return float(np.min(total))


def _per_interface_value(group: _Group, fill: float, values: np.ndarray, reduce) -> np.ndarray:
    """Reduce per-config ``values`` to one number per interface value (array shaped like the interface)."""
    out = np.full(max(1, math.prod(group.configs.interface_shape)), fill)
    reduce.at(out, group.configs.interface_index, values)
    return out.reshape(group.configs.interface_shape) if group.configs.interface else np.asarray(out[0])


def _interface_value(group: _Group, hub: tuple[str, ...], hub_index: tuple[int, ...]) -> int:
    shape = [group.configs.interface_shape[i] for i in range(len(group.configs.interface))]
    index = [hub_index[hub.index(d)] for d in group.configs.interface]
    return int(np.ravel_multi_index(index, shape)) if shape else 0


def _items(group: _Group, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = group.fronts.get(value, np.zeros(0, int))
    return rows, group.configs.latency[rows], group.configs.importance[rows]


def _knapsack_groups(structure: HubStructure, hub_index: tuple[int, ...]) -> list[tuple[np.ndarray, KnapsackGroup]]:
    """Each block's config rows and knapsack group at this hub assignment (cached per interface value)."""
    out = []
    for g, group in enumerate(structure.groups):
        value = _interface_value(group, structure.hub, hub_index)
        key = (g, value)
        if key not in structure.knapsack_groups:
            rows, latency, importance = _items(group, value)
            structure.knapsack_groups[key] = (rows, KnapsackGroup(latency, importance, group.removable))
        out.append(structure.knapsack_groups[key])
    return out


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
    incumbent: Incumbent | None = None  # the answer in the search's own terms (to warm-start another budget)

    @property
    def best(self) -> float | None:
        """The objective found, or None when the search found no configuration."""
        return None if self.objective == -math.inf else self.objective


@dataclasses.dataclass(frozen=True)
class Incumbent:
    """A configuration known to fit: its value, hub assignment (flat index) and per-group row (None: removed)."""

    value: float
    hub: int
    picks: tuple


def lagrangian_bounds(structure: HubStructure, budget: float) -> np.ndarray:
    """Upper bound on every hub assignment's knapsack at once. For any multiplier lam >= 0,
    base_imp + lam * (budget - base_lat) + sum_g max(0 if removable, max_c imp_c - lam * lat_c)
    bounds it from above (weak duality), and its least value over lam is the knapsack's LP bound,
    reached at the slope of some block's front. So the multipliers are quantiles of the fronts' slopes
    (d importance / d latency between neighbouring configurations, and importance / latency from
    removal): the bounds come out close to the LP bounds, and the few assignments that reach the top of
    the search get their exact LP bound then.

    Only ``lam * budget`` depends on the budget: the budget-free values are computed once per structure
    (when small enough to keep) and each further budget costs one pass over them (``mdp pareto``)."""
    if structure.coarse_multipliers is None:
        multipliers = np.unique(np.concatenate([[0.0], np.quantile(_front_slopes(structure),
                                                                   np.linspace(0, 1, _LAGRANGE_MULTIPLIERS))]))
        structure.coarse_multipliers = multipliers
        structure.coarse_tables = _group_terms(structure, multipliers)
        if multipliers.size * structure.base_latency.size <= _KEPT_VALUES:
            structure.coarse_values = _lagrangian_values(structure, multipliers, structure.coarse_tables, 0,
                                                         multipliers.size)
    multipliers = structure.coarse_multipliers
    if structure.coarse_values is not None:
        return _least(structure.coarse_values + multipliers[:, None] * budget)[0]
    return _least_over(structure, budget, multipliers, structure.coarse_tables)[0]


def _front_slopes(structure: HubStructure) -> np.ndarray:
    slopes = [np.zeros(1)]
    for group in structure.groups:
        configs = group.configs  # per interface value, latency ascending (enumerate_block)
        same = configs.interface_index[1:] == configs.interface_index[:-1]
        d_lat, d_imp = np.diff(configs.latency), np.diff(configs.importance)
        step = same & (d_lat > 0)
        slopes += [d_imp[step] / d_lat[step], configs.importance / np.maximum(configs.latency, 1e-12)]
    slopes = np.concatenate(slopes)
    # Quantiles of an evenly strided sample are as good for placing 48 multipliers, and cheaper.
    return slopes[:: max(1, slopes.size // 200_000)]


def _least(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise least value and the row attaining it (row by row: argmin down a C-ordered axis is slow)."""
    best = values[0].copy()
    argmin = np.zeros(values.shape[1], int)
    for i in range(1, values.shape[0]):
        better = values[i] < best
        best = np.where(better, values[i], best)
        argmin[better] = i
    return best, argmin


def _least_over(structure: HubStructure, budget: float, multipliers: np.ndarray, tables) -> tuple[np.ndarray, np.ndarray]:
    """The least Lagrangian bound of every hub assignment over ``multipliers``, in slices that bound the
    memory used, and the multiplier index that gives it."""
    count = structure.base_latency.size
    step = max(1, _KEPT_VALUES // (4 * max(1, count)))
    best = np.full(count, np.inf)
    argmin = np.zeros(count, int)
    for start in range(0, multipliers.size, step):
        stop = min(start + step, multipliers.size)
        value, which = _least(_lagrangian_values(structure, multipliers, tables, start, stop)
                              + multipliers[start:stop, None] * budget)
        better = value < best
        best[better], argmin[better] = value[better], which[better] + start
    return best, argmin


def _group_terms(structure: HubStructure, multipliers: np.ndarray) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Per interface (tuple of hub dims): sum over its blocks of max(0 if removable, max_c imp_c - lam * lat_c),
    as an array (multiplier, *interface shape). Blocks that share an interface are summed first, so the
    hub-sized arrays are touched once per interface rather than once per block."""
    by_interface: dict[tuple[str, ...], np.ndarray] = {}
    n = multipliers.size
    for group in structure.groups:
        configs = group.configs
        cells = max(1, math.prod(configs.interface_shape))
        table = np.full((n, cells), 0.0 if group.removable else -np.inf)
        if configs.latency.size:
            index = configs.interface_index  # rows come grouped by interface value (enumerate_block)
            starts = np.flatnonzero(np.concatenate([[True], index[1:] != index[:-1]]))
            per_value = np.maximum.reduceat(configs.importance[None, :] - multipliers[:, None] * configs.latency[None, :],
                                            starts, axis=1)
            columns = index[starts]
            table[:, columns] = np.maximum(table[:, columns], per_value)
        table = table.reshape((n,) + tuple(configs.interface_shape))
        key = configs.interface
        by_interface[key] = by_interface[key] + table if key in by_interface else table
    return list(by_interface.items())


def _lagrangian_values(structure: HubStructure, multipliers: np.ndarray, tables, start: int, stop: int) -> np.ndarray:
    """Budget-free part of the Lagrangian, base_imp - lam * base_lat + sum_g max(...), for multipliers
    start:stop (rows) and every hub assignment (columns). Interfaces list hub dims in hub order, so a
    table reaches the hub's shape by inserting unit axes."""
    hub, shape = structure.hub, structure.hub_shape
    lam = multipliers[start:stop, None]
    total = (structure.base_importance[None, :] - lam * structure.base_latency[None, :]).reshape((stop - start,) + shape)
    for interface, table in tables:
        total += table[start:stop].reshape((stop - start,) + tuple(n if d in interface else 1 for d, n in zip(hub, shape)))
    return total.reshape(stop - start, -1)


def solve_decomposed(structure: HubStructure, problem: Problem, budget: float, time_limit: float | None,
                     threads: int | None, verbose: bool, run_highs, knapsack: str = "dp",
                     latency_problem: Problem | None = None, incumbent: Incumbent | None = None) -> DecomposedResult:
    """Best-first search over hub assignments; see the module docstring.

    Bounds are lazy: every assignment first gets a vectorised Lagrangian bound (all at once, cheap), and
    its exact LP bound only when it reaches the top of the queue; most assignments are dismissed by the
    cheap bound alone. ``incumbent`` (a configuration known to fit this budget, e.g. the optimum at a
    smaller budget) starts the search with its value, so assignments that cannot beat it are never solved.

    Latencies are checked exactly: the search admits sums up to ``budget + slack`` (slack: far above the
    rounding error of any order of summation, far below any real latency difference) and a configuration
    in that band is kept only if ``latency_problem.latency`` (a correctly rounded sum) is within the budget."""
    started = time.perf_counter()
    latency_problem = latency_problem or problem
    shape = structure.hub_shape
    count = int(math.prod(shape))
    slack = BUDGET_SLACK * abs(budget)
    limit = budget + slack

    def assignment(h: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(h, shape)) if shape else ()

    def exact_bound(h: int) -> float:
        residual = limit - structure.base_latency[h]
        if residual < 0:
            return -math.inf
        groups = [g for _, g in _knapsack_groups(structure, assignment(h))]
        return float(structure.base_importance[h]) + lp_bound(groups, residual)

    def fits(h: int, picks) -> bool:
        choice, kept = _configuration(structure, problem, assignment(h), picks)
        return latency_problem.latency(choice, kept) <= budget

    if count <= EXACT_BOUNDS_UP_TO:
        bounds = np.array([exact_bound(h) for h in range(count)])
        is_exact = np.ones(count, bool)
    else:
        bounds = lagrangian_bounds(structure, limit)
        is_exact = np.zeros(count, bool)
    bound_s = time.perf_counter() - started

    best_value, best = -math.inf, None
    if incumbent is not None:
        best_value, best = incumbent.value, (incumbent.hub, list(incumbent.picks))
    # Visit assignments from the best bound down: the initial bounds in sorted order, merged with a heap
    # of the exact bounds that replace them when they come up.
    order = np.argsort(-bounds, kind="stable")
    sorted_bounds = bounds[order].tolist()
    order = order.tolist()
    position = 0
    heap: list[tuple[float, int]] = []
    solved = tightened = 0
    knapsack_s = 0.0
    status = "optimal"
    open_bound = -math.inf
    while True:
        from_heap = bool(heap) and (position >= count or -heap[0][0] >= sorted_bounds[position])
        if not from_heap and position >= count:
            break
        top, h = (-heap[0][0], heap[0][1]) if from_heap else (sorted_bounds[position], order[position])
        if top <= best_value + 1e-12 * max(1.0, abs(best_value)) or top == -math.inf:
            break
        if time_limit is not None and time.perf_counter() - started > time_limit:
            status, open_bound = "time_limit", top
            break
        if from_heap:
            heapq.heappop(heap)
        else:
            position += 1
        if not is_exact[h]:
            is_exact[h] = True
            tightened += 1
            tighter = exact_bound(h)
            if tighter > best_value:
                heapq.heappush(heap, (-tighter, h))
            continue
        remaining = None if time_limit is None else max(1.0, time_limit - (time.perf_counter() - started))
        t0 = time.perf_counter()
        if knapsack == "dp":
            outcome = _solve_knapsack_dp(structure, h, assignment(h), budget, slack, best_value,
                                         lambda picks, h=h: fits(h, picks))
        else:
            outcome = _solve_knapsack(structure, h, assignment(h), limit, remaining, threads, verbose, run_highs)
        knapsack_s += time.perf_counter() - t0
        solved += 1
        if outcome is not None and outcome[0] > best_value:
            best_value, best = outcome[0], (h, outcome[1])
    timings = {"bound_s": bound_s, "knapsack_s": knapsack_s}
    if best is None:
        return DecomposedResult({}, {}, -math.inf, -math.inf, solved, count, count - solved, timings,
                                "infeasible" if status == "optimal" else status)
    h, picks = best
    choice, kept = _configuration(structure, problem, assignment(h), picks)
    timings["bounds_tightened"] = tightened
    return DecomposedResult(choice, kept, best_value, max(best_value, open_bound), solved, count, count - solved,
                            timings, status, Incumbent(best_value, h, tuple(picks)))


def _configuration(structure: HubStructure, problem: Problem, hub_index, picks) -> tuple[dict, dict]:
    """Option index per dim and kept flag per block of a hub assignment plus one row (or None) per group."""
    choice = {d.name: d.full_index for d in problem.dims}
    for d, k in zip(structure.hub, hub_index):
        choice[d] = int(k)
    kept = {}
    for group, row in zip(structure.groups, picks):
        kept[group.name] = row is not None
        if row is not None:
            for d, k in zip(group.configs.private, group.configs.private_index[row]):
                choice[d] = int(k)
    return choice, kept


def _solve_knapsack_dp(structure, h, hub_index, budget, slack, best_value, fits):
    """Exact knapsack of one hub assignment by Pareto-state DP; None unless it reaches ``best_value``.
    ``fits(rows)`` is the exact latency test for selections within ``slack`` of the budget."""
    groups = _knapsack_groups(structure, hub_index)

    def rows_of(picks):
        return [None if p is None else int(rows[p]) for (rows, _), p in zip(groups, picks)]

    base = float(structure.base_importance[h])
    result = solve_mckp([g for _, g in groups], budget - structure.base_latency[h], best_value - base,
                        slack=slack, accept=lambda picks: fits(rows_of(picks)))
    if result is None:
        return None
    value, picks = result
    return base + value, rows_of(picks)


def _solve_knapsack(structure, h, hub_index, limit, time_limit, threads, verbose, run_highs):
    """Exact MCKP for one hub assignment: one item (or removal) per block within the residual budget."""
    import pyomo.environ as pyo
    from pyomo.core.expr.numeric_expr import LinearExpression

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
    residual = limit - structure.base_latency[h]
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
