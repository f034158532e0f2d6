"""Exact hub decomposition: branch on the dims that blocks share, solve a small knapsack per branch.

In a ViT every block meets the rest of the network only through the embedding dim E; in general a
block's dims split into *private* dims (used by that block alone) and *hub* dims (shared). Fixing the hub
dims leaves one independent choice per block, coupled only by the latency budget: a multiple-choice
knapsack (MCKP) whose items are each block's Pareto-optimal configurations at that hub assignment.

The search is a best-first branch and bound over the hub dims, assigned one at a time. For a multiplier
lam >= 0 the Lagrangian ``lam * budget + sum of (importance - lam * latency)``, each removable block
counting at least 0, bounds every completion of a partial assignment from above (weak duality), and its
maximum over the unassigned dims is computed by bucket elimination: the hub dims are eliminated in an
order that keeps every intermediate table small (a chain of stages is eliminated from one end), and the
search assigns them in the reverse order, so a node's bound is its parent's with one message swapped for
one bucket entry (a vector over the multipliers). Multipliers sit at quantiles of the blocks' front
slopes, where the LP optimum's multiplier lies. A complete assignment gets its exact LP bound (greedy
over each block's upper concave hull) when it reaches the top of the queue, and its knapsack is solved
exactly only if that bound still beats the best found. Every assignment is solved or bounded below the
incumbent, so the result is the proven optimum, the same as the monolithic MILP's.

A block's configurations are enumerated and reduced to their Pareto front once per interface value; a
block whose whole grid is too large to enumerate (the first block of a late stage at 8-channel steps) is
enumerated lazily, only at the interface values the search reaches, and its Lagrangian table is computed
by eliminating its private dims instead.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections import defaultdict

import numpy as np

from mdp_cli.solve.configurations import MAX_ENUMERATED_CELLS, BlockConfigs, broadcast, enumerate_block
from mdp_cli.solve.knapsack import KnapsackGroup, lp_bound, solve_mckp
from mdp_cli.solve.problem import Problem

# The largest table (cells, per multiplier) the bound elimination may build over hub dims (all are kept)
# and inside a lazily enumerated block (built in chunks of multipliers, then dropped); a problem that
# needs larger ones goes to the monolithic MILP.
MAX_BUCKET_CELLS = 2_000_000
MAX_BLOCK_BUCKET_CELLS = 8_000_000
# A lazily enumerated block's grid at one interface value (its private dims) is at most this large.
MAX_FRONT_CELLS = 2_000_000
# Hubs up to this many assignments get the exact LP bound of each up front.
EXACT_BOUNDS_UP_TO = 16
_LAGRANGE_MULTIPLIERS = 48
_MIN_MULTIPLIERS = 8
_BOUND_FLOATS = 16_000_000  # multipliers x cells of the kept bound tables (128 MB)
_CHUNK_FLOATS = 4_000_000  # multipliers x cells of one intermediate table inside a block
# Relative to the budget: far above the rounding error of summing a few thousand latencies in any order
# (~1e-13), far below any latency difference a measurement can resolve. Candidates in the band are
# checked with the exact (correctly rounded) latency.
BUDGET_SLACK = 1e-9


@dataclasses.dataclass
class _Front:
    """One block's Pareto-optimal configurations at one value of its interface dims (latency ascending)."""

    private_index: np.ndarray  # (configs, private dims) option indices
    latency: np.ndarray
    importance: np.ndarray
    knapsack: KnapsackGroup
    counts: dict = dataclasses.field(default_factory=dict)  # count name -> per configuration


@dataclasses.dataclass
class _Group:
    """A block (or a fixed part): its interface (hub) dims, private dims, and fronts per interface value."""

    name: str
    removable: bool
    interface: tuple[str, ...]  # in hub order
    private: tuple[str, ...]
    interface_shape: tuple[int, ...]
    terms: list
    entries: list
    configs: BlockConfigs | None  # every interface value's front at once, when the grid is small
    rows: dict = dataclasses.field(default_factory=dict)  # interface value -> config rows (enumerated)
    fronts: dict = dataclasses.field(default_factory=dict)  # interface value -> _Front, built on first use


@dataclasses.dataclass
class _Bounds:
    """Everything the bounds need, independent of the budget: multipliers, and per hub dim (in
    elimination order) its bucket (the sum of the tables that mention it) and message (the bucket
    maximised over that dim); ``root`` is the Lagrangian maximised over the whole hub, without the
    ``lam * budget`` term. Tables are shaped (multiplier, *hub) with 1 on the axes they do not span."""

    multipliers: np.ndarray  # (row, 1 + resources): the weights of latency and of each count
    buckets: dict
    messages: dict
    root: np.ndarray


@dataclasses.dataclass
class HubStructure:
    hub: tuple[str, ...]
    hub_shape: tuple[int, ...]
    groups: list[_Group]
    # Ungated terms over hub dims and ungated importance of hub dims, each as a hub-rank table.
    base_latency: list[np.ndarray]
    base_importance: list[np.ndarray]
    constant_latency: float
    constant_importance: float
    order: list[int]  # hub axes (more than one option) in elimination order
    problem: Problem
    bounds: _Bounds | None = None
    # Counts beside latency that a constraint caps ("params", "flops"): their ungated tables and constants.
    resources: tuple[str, ...] = ()
    base_resources: dict = dataclasses.field(default_factory=dict)
    constant_resources: dict = dataclasses.field(default_factory=dict)
    bounds_limits: np.ndarray | None = None

    @property
    def assignments(self) -> int:
        return math.prod(self.hub_shape)

    def base_at(self, assignment: tuple[int, ...]) -> tuple[float, float]:
        """Latency and importance of the ungated hub terms at a complete assignment."""
        latency = self.constant_latency + sum(float(t[_at(t, assignment)]) for t in self.base_latency)
        importance = self.constant_importance + sum(float(t[_at(t, assignment)]) for t in self.base_importance)
        return latency, importance

    def base_counts_at(self, assignment: tuple[int, ...]) -> dict[str, float]:
        return {name: self.constant_resources[name] + sum(float(t[_at(t, assignment)]) for t in tables)
                for name, tables in self.base_resources.items()}


def _at(table: np.ndarray, assignment, offset: int = 0) -> tuple:
    """Index of a hub-rank table (after ``offset`` leading axes) at an assignment: 0 on its unit axes."""
    return tuple(a if n > 1 else 0 for a, n in zip(assignment, table.shape[offset:]))


def _hub_rank(table: np.ndarray, dims: tuple[str, ...], hub: tuple[str, ...]) -> np.ndarray:
    return np.asarray(broadcast(np.asarray(table, dtype=float), dims, hub), dtype=float).reshape(
        tuple(table.shape[dims.index(d)] if d in dims else 1 for d in hub))


def analyse(problem: Problem, latency_problem: Problem, blocks_enabled: bool,
            resources: tuple[str, ...] = (), pareto: bool = True) -> HubStructure | None:
    """Return the hub structure if the problem decomposes into shared dims plus per-block choices whose
    bound tables stay small, else None. ``resources``: counts to carry beside latency (for caps);
    ``pareto=False``: with counts, keep every configuration (for bounds only: no Pareto filter)."""
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
        interface_shape = tuple(len(problem.dim(d).options) for d in interface)
        grid = math.prod(len(problem.dim(d).options) for d in dims_used)
        configs = None
        if grid <= MAX_ENUMERATED_CELLS:
            configs = enumerate_block(name, interface, private, terms, entries, problem, resources, pareto)
        elif resources:
            return None
        elif math.prod(len(problem.dim(d).options) for d in private) > MAX_FRONT_CELLS or \
                _elimination_order(_scopes(terms, entries, interface + private, problem),
                                   range(len(interface), len(interface) + len(private)),
                                   most=MAX_BLOCK_BUCKET_CELLS) is None:
            return None
        group = _Group(name, name in removable, interface, private, interface_shape, terms, entries, configs)
        if configs is not None:
            # Rows come grouped by interface value (enumerate_block): split them at each change.
            index = configs.interface_index
            starts = np.flatnonzero(np.concatenate([[True], index[1:] != index[:-1]])) if index.size else np.zeros(0, int)
            group.rows = dict(zip(index[starts].tolist(), np.split(np.arange(index.size), starts[1:])))
        groups.append(group)

    base_latency, base_importance = [], []
    base_resources: dict[str, list] = {name: [] for name in resources}
    constant_latency, constant_importance = latency_problem.constant_latency, 0.0
    for term in latency_problem.terms:
        if term.block is None and id(term) not in in_parts:
            base_latency.append(_hub_rank(term.table, term.dims, hub))
            for name in resources:
                if name in term.resources:
                    base_resources[name].append(_hub_rank(np.asarray(term.resources[name]), term.dims, hub))
    part_dims = {d for _, dims in parts for d in dims}
    for entry in problem.importance:
        if entry.block is None and entry.dim not in part_dims:
            # ungated importance of a dim nothing else uses is constant: take it whole (a dim that only
            # this entry uses is left at its full size, so the structure's objective is the problem's)
            if entry.dim in hub:
                base_importance.append(_hub_rank(entry.values, (entry.dim,), hub))
            else:
                constant_importance += float(entry.values[-1])
    scopes = [{i for i, n in enumerate(t.shape) if n > 1} for t in base_latency + base_importance]
    scopes += [{hub.index(d) for d in g.interface if len(problem.dim(d).options) > 1} for g in groups]
    order = _elimination_order(scopes, [i for i, n in enumerate(hub_shape) if n > 1], hub_shape)
    if order is None:
        return None
    return HubStructure(hub, hub_shape, groups, base_latency, base_importance, constant_latency,
                        constant_importance, order, problem, None, tuple(resources), base_resources,
                        {name: 0.0 for name in resources})


def _scopes(terms, entries, axes: tuple[str, ...], problem: Problem) -> tuple[list[set], tuple[int, ...]]:
    sizes = tuple(len(problem.dim(d).options) for d in axes)
    scopes = [{axes.index(d) for d in t.dims if sizes[axes.index(d)] > 1} for t in terms]
    scopes += [{axes.index(e.dim)} for e in entries if sizes[axes.index(e.dim)] > 1]
    return scopes, sizes


def _elimination_order(scopes, axes, sizes=None, most: int = MAX_BUCKET_CELLS) -> list[int] | None:
    """Greedy elimination order of ``axes`` (each step: the axis whose bucket table is smallest), or None
    if some bucket would exceed ``most`` cells. ``scopes``: the axes each table spans."""
    if sizes is None:
        scopes, sizes = scopes
    scopes = [set(s) for s in scopes if s]
    remaining, order = [a for a in axes if sizes[a] > 1], []
    while remaining:
        def cells(axis):
            return math.prod(sizes[a] for a in set().union(*(s for s in scopes if axis in s), {axis}))
        axis = min(remaining, key=lambda a: (cells(a), a))
        if cells(axis) > most:
            return None
        inside = [s for s in scopes if axis in s]
        scopes = [s for s in scopes if axis not in s] + [set().union(*inside, {axis}) - {axis}]
        remaining.remove(axis)
        order.append(axis)
    return order


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


# -- block fronts ------------------------------------------------------------------------------------

def _front(group: _Group, value: int, problem: Problem) -> _Front:
    """The block's Pareto front at one interface value (flat index), built once."""
    front = group.fronts.get(value)
    if front is not None:
        return front
    if group.configs is not None:
        rows = group.rows.get(value, np.zeros(0, int))
        private_index, latency, importance = (group.configs.private_index[rows], group.configs.latency[rows],
                                              group.configs.importance[rows])
        counts = {name: values[rows] for name, values in group.configs.resources.items()}
    else:
        at = dict(zip(group.interface, np.unravel_index(value, group.interface_shape))) if group.interface else {}
        configs = enumerate_block(group.name, (), group.private, _restricted(group.terms, at),
                                  [e for e in group.entries if e.dim not in at], problem)
        extra = sum(float(e.values[at[e.dim]]) for e in group.entries if e.dim in at)
        private_index, latency, importance = configs.private_index, configs.latency, configs.importance + extra
        counts = {}
    front = _Front(private_index, latency, importance, KnapsackGroup(latency, importance, group.removable), counts)
    group.fronts[value] = front
    return front


def _restricted(terms, at: dict) -> list:
    """Terms with the dims in ``at`` fixed to those option indices (their axes dropped)."""
    out = []
    for term in terms:
        table = term.table[tuple(int(at[d]) if d in at else slice(None) for d in term.dims)]
        out.append(dataclasses.replace(term, dims=tuple(d for d in term.dims if d not in at), table=table))
    return out


def _flat_value(group: _Group, hub: tuple[str, ...], assignment: tuple[int, ...]) -> int:
    index = [assignment[hub.index(d)] for d in group.interface]
    return int(np.ravel_multi_index(index, group.interface_shape)) if group.interface else 0


def _fronts(structure: HubStructure, assignment: tuple[int, ...]) -> list[_Front]:
    return [_front(g, _flat_value(g, structure.hub, assignment), structure.problem) for g in structure.groups]


# -- bounds ------------------------------------------------------------------------------------------

def _group_table(group: _Group, problem: Problem, weights: np.ndarray, with_importance: bool = True) -> np.ndarray:
    """max(0 if removable, max over the block's configurations of importance - lam * latency (- mu * each
    count)) for every row of ``weights`` (lam, mu...) and interface value: (row, *interface shape)."""
    n = weights.shape[0]
    multipliers = weights[:, 0]
    cells = max(1, math.prod(group.interface_shape))
    if group.configs is not None:
        configs = group.configs
        table = np.full((n, cells), -np.inf)
        if configs.latency.size:
            index = configs.interface_index  # rows come grouped by interface value (enumerate_block)
            starts = np.flatnonzero(np.concatenate([[True], index[1:] != index[:-1]]))
            gains = (configs.importance if with_importance else np.zeros_like(configs.latency))
            values = gains[None, :] - multipliers[:, None] * configs.latency[None, :]
            for r, name in enumerate(sorted(configs.resources)):
                values -= weights[:, 1 + r, None] * configs.resources[name][None, :]
            per_value = np.maximum.reduceat(values, starts, axis=1)
            table[:, index[starts]] = per_value
        table = table.reshape((n,) + group.interface_shape)
    else:
        table = _eliminated_table(group, problem, multipliers, with_importance)
    return np.maximum(table, 0.0) if group.removable else table


def _eliminated_table(group: _Group, problem: Problem, multipliers: np.ndarray, with_importance: bool) -> np.ndarray:
    """The block's Lagrangian maximised over its private dims by eliminating them one at a time (no
    enumeration of the grid), in chunks of multipliers that keep each intermediate table small."""
    axes = group.interface + group.private
    entries = group.entries if with_importance else []
    order = _elimination_order(_scopes(group.terms, entries, axes, problem),
                               range(len(group.interface), len(axes)), most=MAX_BLOCK_BUCKET_CELLS)
    sizes = [len(problem.dim(d).options) for d in axes]
    largest = _largest_bucket(group, entries, axes, order, problem)
    chunk = max(1, _CHUNK_FLOATS // max(1, largest))
    out = []
    for start in range(0, multipliers.size, chunk):
        lam = multipliers[start:start + chunk].reshape((-1,) + (1,) * len(axes))
        factors = [-lam * _hub_rank(t.table, t.dims, axes)[None] for t in group.terms]
        factors += [_hub_rank(e.values, (e.dim,), axes)[None] for e in entries]
        for axis in order:
            inside = [f for f in factors if f.shape[1 + axis] > 1]
            if inside:  # (a dim that only importance left out here depends on drops out)
                factors = [f for f in factors if f.shape[1 + axis] == 1] + [sum(inside).max(axis=1 + axis, keepdims=True)]
        total = sum(factors) + np.zeros((lam.shape[0],) + tuple(sizes[:len(group.interface)]) + (1,) * len(group.private))
        out.append(total.reshape((lam.shape[0],) + group.interface_shape))
    return np.concatenate(out)


def _largest_bucket(group, entries, axes, order, problem) -> int:
    scopes, sizes = _scopes(group.terms, entries, axes, problem)
    scopes, largest = [set(s) for s in scopes if s], math.prod(sizes[: len(group.interface)])
    for axis in order:
        inside = [s for s in scopes if axis in s]
        union = set().union(*inside, {axis})
        largest = max(largest, math.prod(sizes[a] for a in union))
        scopes = [s for s in scopes if axis not in s] + [union - {axis}]
    return largest


def _front_slopes(structure: HubStructure) -> np.ndarray:
    slopes = [np.zeros(1)]
    for group in structure.groups:
        if group.configs is not None:
            configs = group.configs  # per interface value, latency ascending (enumerate_block)
            same = configs.interface_index[1:] == configs.interface_index[:-1]
            latency, importance = configs.latency, configs.importance
        else:  # a sample: the front at the full interface value
            front = _front(group, max(0, math.prod(group.interface_shape) - 1), structure.problem)
            latency, importance = front.latency, front.importance
            same = np.ones(max(0, latency.size - 1), bool)
        d_lat, d_imp = np.diff(latency), np.diff(importance)
        step = same & (d_lat > 0)
        positive = latency > 0  # (the linear model's tables hold negative latencies: no slope there)
        slopes += [d_imp[step] / d_lat[step], importance[positive] / latency[positive]]
    slopes = np.concatenate(slopes)
    # Quantiles of an evenly strided sample are as good for placing the multipliers, and cheaper.
    return slopes[:: max(1, slopes.size // 200_000)]


def _hub_tables(structure: HubStructure, weights: np.ndarray, with_importance: bool = True) -> list[np.ndarray]:
    """Every table of the hub Lagrangian (row of weights, *hub), the constants folded into the first."""
    hub, shape, problem = structure.hub, structure.hub_shape, structure.problem
    rows = weights.shape[0]

    def weight(column: int) -> np.ndarray:
        return weights[:, column].reshape((-1,) + (1,) * len(hub))

    constant = (structure.constant_importance if with_importance else 0.0) - weight(0) * structure.constant_latency
    tables = [constant + np.zeros((rows,) + (1,) * len(hub))]
    tables += [-weight(0) * t[None] for t in structure.base_latency]
    for r, name in enumerate(structure.resources):
        tables[0] = tables[0] - weight(1 + r) * structure.constant_resources[name]
        tables += [-weight(1 + r) * t[None] for t in structure.base_resources[name]]
    if with_importance:
        tables += [t[None] for t in structure.base_importance]
    for group in structure.groups:
        table = _group_table(group, problem, weights, with_importance)
        tables.append(table.reshape((rows,) + tuple(n if d in group.interface else 1 for d, n in zip(hub, shape))))
    return tables


def _eliminate(tables: list[np.ndarray], order: list[int], shape: tuple[int, ...]) -> tuple[dict, dict, np.ndarray]:
    """Bucket elimination (max) of the hub axes in ``order``: buckets, messages and the root value."""
    buckets, messages = {}, {}
    for axis in order:
        inside = [t for t in tables if t.shape[1 + axis] > 1]
        tables = [t for t in tables if t.shape[1 + axis] == 1]
        width = tuple(n if i == axis else 1 for i, n in enumerate(shape))
        buckets[axis] = sum(inside, np.zeros((1,) + width))  # (zeros: a dim nothing here depends on)
        messages[axis] = buckets[axis].max(axis=1 + axis, keepdims=True)
        tables.append(messages[axis])
    return buckets, messages, sum(tables).reshape(-1)


def _prepare_bounds(structure: HubStructure, limits: np.ndarray) -> _Bounds:
    """The bound tables; with capped counts their multipliers are fitted to ``limits`` (budget, caps), so
    they are rebuilt when the limits change."""
    if structure.bounds is not None and structure.resources and not np.array_equal(structure.bounds_limits, limits):
        structure.bounds = None
    if structure.bounds is None:
        structure.bounds_limits = limits
        problem, hub_shape = structure.problem, structure.hub_shape
        cells = sum(math.prod(g.interface_shape) for g in structure.groups)
        scopes = [{i for i, n in enumerate(t.shape) if n > 1} for t in structure.base_latency + structure.base_importance]
        scopes += [{structure.hub.index(d) for d in g.interface if len(problem.dim(d).options) > 1} for g in structure.groups]
        for axis in structure.order:
            inside = [s for s in scopes if axis in s]
            union = set().union(*inside, {axis})
            cells += math.prod(hub_shape[a] for a in union)
            scopes = [s for s in scopes if axis not in s] + [union - {axis}]
        count = int(min(_LAGRANGE_MULTIPLIERS, max(_MIN_MULTIPLIERS, _BOUND_FLOATS // max(1, cells))))
        # Quantiles by sorting (np.quantile's first call imports numpy.ma: 20 ms of a small solve).
        slopes = np.sort(_front_slopes(structure))
        quantiles = slopes[np.round(np.linspace(0, slopes.size - 1, count - 1)).astype(int)]
        multipliers = _distinct(np.concatenate([[0.0], quantiles]))[:, None]
        if structure.resources:
            multipliers = _weights_for_counts(structure, multipliers[:, 0], limits)
        buckets, messages, root = _eliminate(_hub_tables(structure, multipliers), structure.order, hub_shape)
        structure.bounds = _Bounds(multipliers, buckets, messages, root)
    return structure.bounds


def _weights_for_counts(structure: HubStructure, lambdas: np.ndarray, limits: np.ndarray, keep: int = 128) -> np.ndarray:
    """Rows (lam, mu_1, ...) of multipliers for a problem whose counts are capped too. Every row gives a
    valid bound; the tight ones are near the minimiser of the dual ``w . limits + max(Lagrangian)``. So: a
    coarse grid (latency multipliers at the front-slope quantiles, count multipliers at quantiles of
    importance per unit of each count), then two finer grids around the best row found; the ``keep``
    rows of least dual value are kept."""
    columns = [_distinct(lambdas[np.round(np.linspace(0, lambdas.size - 1, 8)).astype(int)])]
    for name in structure.resources:
        ratios = [g.configs.importance[g.configs.resources[name] > 0] /
                  g.configs.resources[name][g.configs.resources[name] > 0]
                  for g in structure.groups if g.configs is not None and g.configs.latency.size]
        ratios = np.concatenate(ratios) if ratios else np.zeros(1)
        ratios = np.sort(ratios[np.isfinite(ratios) & (ratios > 0)])
        grid = ratios[np.round(np.linspace(0, ratios.size - 1, 5)).astype(int) * (ratios.size > 0)] * 0.5 \
            if ratios.size else np.zeros(0)
        columns.append(_distinct(np.concatenate([[0.0], grid])))
    rows = np.array(list(itertools.product(*columns)), dtype=float)
    evaluated = [rows]
    values = [_dual_values(structure, rows, limits)]
    for factors in ((0.5, 0.7, 0.85, 1.0, 1.2, 1.4, 2.0), (0.9, 0.95, 1.0, 1.05, 1.1)):
        best = evaluated[-1][np.argmin(values[-1])] if len(evaluated) == 1 else \
            np.concatenate(evaluated)[np.argmin(np.concatenate(values))]
        columns = []
        for c, value in enumerate(best):
            smallest = min((v for v in np.concatenate(evaluated)[:, c] if v > 0), default=1.0)
            columns.append(_distinct(np.array(factors) * value) if value > 0 else
                           np.array([0.0, 0.25 * smallest, 0.5 * smallest]))
        rows = np.array(list(itertools.product(*columns)), dtype=float)
        evaluated.append(rows)
        values.append(_dual_values(structure, rows, limits))
    rows, values = np.concatenate(evaluated), np.concatenate(values)
    order = np.argsort(values, kind="stable")[:keep]
    return rows[order]


def _distinct(values) -> np.ndarray:
    """Sorted distinct values (np.unique's first call imports numpy.ma: 20 ms of a small solve)."""
    values = np.sort(np.asarray(values, dtype=float).ravel())
    return values[np.concatenate([[True], np.diff(values) > 0])] if values.size else values


def _dual_values(structure: HubStructure, weights: np.ndarray, limits: np.ndarray) -> np.ndarray:
    _, _, root = _eliminate(_hub_tables(structure, weights), structure.order, structure.hub_shape)
    return weights @ limits + root


def minimum_latency(structure: HubStructure) -> float:
    """Smallest reachable latency: every block at its cheapest (or removed), over the best hub assignment
    (the same elimination with importance left out and one multiplier)."""
    weights = np.zeros((1, 1 + len(structure.resources)))
    weights[0, 0] = 1.0
    _, _, root = _eliminate(_hub_tables(structure, weights, with_importance=False), structure.order,
                           structure.hub_shape)
    return float(-root[0])


# -- search ------------------------------------------------------------------------------------------

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
    """A configuration known to fit: its value, hub assignment and per-group front row (None: removed)."""

    value: float
    hub: tuple
    picks: tuple


def solve_decomposed(structure: HubStructure, problem: Problem, budget: float, time_limit: float | None,
                     threads: int | None, verbose: bool, run_highs, knapsack: str = "dp",
                     latency_problem: Problem | None = None, incumbent: Incumbent | None = None,
                     caps: dict[str, float] | None = None) -> DecomposedResult:
    """Best-first branch and bound over hub assignments; see the module docstring.

    ``incumbent`` (a configuration known to fit this budget, e.g. the optimum at a smaller budget) starts
    the search with its value, so nodes that cannot beat it are never expanded.

    Latencies are checked exactly: the search admits sums up to ``budget + slack`` (slack: far above the
    rounding error of any order of summation, far below any real latency difference) and a configuration
    in that band is kept only if ``latency_problem.latency`` (a correctly rounded sum) is within the budget.

    ``caps`` (count name -> most allowed, for the structure's resources): every knapsack then has those
    rows too and is solved by HiGHS; the caller checks the caps exactly, as it does the budget."""
    started = time.perf_counter()
    caps = caps or {}
    if caps:
        knapsack = "highs"  # several capacities: the Pareto-state DP is for one
    latency_problem = latency_problem or problem
    shape, order = structure.hub_shape, structure.order
    count = structure.assignments
    slack = BUDGET_SLACK * abs(budget)
    limit = budget + slack

    def exact_bound(assignment: tuple[int, ...]) -> float:
        base_latency, base_importance = structure.base_at(assignment)
        # A negative residual may still fit (blocks with negative latencies, linear model): lp_bound decides.
        return base_importance + lp_bound([f.knapsack for f in _fronts(structure, assignment)], limit - base_latency)

    def fits(assignment, picks) -> bool:
        choice, kept = _configuration(structure, problem, assignment, picks)
        return latency_problem.latency(choice, kept) <= budget

    best_value, best = -math.inf, None
    if incumbent is not None:
        best_value, best = incumbent.value, (incumbent.hub, list(incumbent.picks))

    def threshold() -> float:  # bounds at most this cannot beat the incumbent (ties are not worth a search)
        return best_value + 1e-12 * max(1.0, abs(best_value)) if best_value > -math.inf else -math.inf

    def beaten(value: float) -> bool:
        return value <= threshold() or value == -math.inf

    # Heap items: (-bound, -depth, tie, assignment, vector); vector None marks an exact leaf bound.
    heap: list = []
    tie = itertools.count()
    depth_full = len(order)
    if count <= EXACT_BOUNDS_UP_TO:
        for assignment in itertools.product(*(range(n) for n in shape)):
            value = exact_bound(assignment)
            if value > -math.inf:
                heap.append((-value, -depth_full, next(tie), assignment, None))
        heapq.heapify(heap)
    else:
        limits = np.array([limit] + [caps[name] for name in structure.resources])
        bounds = _prepare_bounds(structure, limits)
        vector = bounds.multipliers @ limits + bounds.root
        heap.append((-float(vector.min()), 0, next(tie), (0,) * len(shape), vector))
    bound_s = time.perf_counter() - started
    limits = np.array([limit] + [caps[name] for name in structure.resources])
    solved = tightened = expanded = 0
    knapsack_s = 0.0
    status = "optimal"
    open_bound = -math.inf
    while heap:
        top = -heap[0][0]
        if beaten(top):
            break
        if time_limit is not None and time.perf_counter() - started > time_limit:
            status, open_bound = "time_limit", top
            break
        _, negative_depth, _, assignment, vector = heapq.heappop(heap)
        depth = -negative_depth
        if vector is not None and depth < depth_full:  # expand: assign the next hub dim
            expanded += 1
            axis = order[depth_full - 1 - depth]
            bucket, message = bounds.buckets[axis], bounds.messages[axis]
            at = list(_at(bucket, assignment, 1))
            at[axis] = slice(None)
            children = (vector - message[(slice(None),) + _at(message, assignment, 1)])[:, None] + \
                bucket[(slice(None),) + tuple(at)]
            child_bounds = children.min(axis=0)
            for value in np.flatnonzero(child_bounds > threshold()).tolist():
                child = list(assignment)
                child[axis] = value
                heapq.heappush(heap, (-float(child_bounds[value]), -(depth + 1), next(tie), tuple(child),
                                      children[:, value]))
            continue
        if vector is not None:  # a complete assignment with its Lagrangian bound: tighten it
            tightened += 1
            tighter = (exact_bound(assignment) if not caps else
                       _leaf_dual_bound(structure, assignment, limits, bounds.multipliers[int(np.argmin(vector))],
                                        bounds.multipliers))
            if not beaten(tighter):
                heapq.heappush(heap, (-tighter, negative_depth, next(tie), assignment, None))
            continue
        remaining = None if time_limit is None else max(1.0, time_limit - (time.perf_counter() - started))
        t0 = time.perf_counter()
        if knapsack == "dp":
            outcome = _solve_knapsack_dp(structure, assignment, budget, slack, best_value,
                                         lambda picks, a=assignment: fits(a, picks))
        else:
            outcome = _solve_knapsack(structure, assignment, limit, remaining, threads, verbose, run_highs, caps,
                                      best_value)
        knapsack_s += time.perf_counter() - t0
        solved += 1
        if outcome is not None and outcome[0] > best_value:
            best_value, best = outcome[0], (assignment, outcome[1])
    timings = {"bound_s": bound_s, "knapsack_s": knapsack_s, "nodes_expanded": expanded}
    if best is None:
        return DecomposedResult({}, {}, -math.inf, -math.inf, solved, count, count - solved, timings,
                                "infeasible" if status == "optimal" else status)
    assignment, picks = best
    choice, kept = _configuration(structure, problem, assignment, picks)
    timings["bounds_tightened"] = tightened
    return DecomposedResult(choice, kept, best_value, max(best_value, open_bound), solved, count, count - solved,
                            timings, status, Incumbent(best_value, tuple(assignment), tuple(picks)))


def _leaf_dual_bound(structure: HubStructure, assignment, limits: np.ndarray, start: np.ndarray,
                     known: np.ndarray, rounds: int = 5) -> float:
    """With caps: the Lagrangian dual of one assignment's knapsack (latency and every count relaxed),
    minimised over the multipliers by grids shrinking around the best row, from the row that bounded the
    assignment in the search. Any row gives a valid bound; a tight one spares HiGHS the branches whose
    LP relaxation cannot beat the incumbent."""
    fronts = _fronts(structure, assignment)
    names = structure.resources
    base_latency, base_importance = structure.base_at(assignment)
    base_counts = structure.base_counts_at(assignment)
    residual = limits - np.array([base_latency] + [base_counts[name] for name in names])
    costs = np.concatenate([np.stack([f.latency] + [f.counts[name] for name in names], axis=1) for f in fronts])
    gains = np.concatenate([f.importance for f in fronts])
    sizes = np.array([f.latency.size for f in fronts])
    if (sizes == 0).any():
        return -math.inf
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    removable = np.array([g.removable for g in structure.groups])
    best_row, best = np.asarray(start, dtype=float), math.inf
    # a multiplier that starts at 0 is tried at the scale of the search's rows for its column
    scales = [min((v for v in known[:, c] if v > 0), default=0.0) for c in range(known.shape[1])]
    spread = 2.0
    for _ in range(rounds):
        factors = np.array([1 / spread, 1 / math.sqrt(spread), 1.0, math.sqrt(spread), spread])
        columns = [factors * v if v > 0 else np.array([0.0, 0.25, 1.0]) * scale
                   for v, scale in zip(best_row, scales)]
        rows = np.array(list(itertools.product(*columns)))
        per_group = np.maximum.reduceat(gains[:, None] - costs @ rows.T, starts, axis=0)
        per_group[removable] = np.maximum(per_group[removable], 0.0)
        values = base_importance + rows @ residual + per_group.sum(axis=0)
        k = int(np.argmin(values))
        if values[k] < best:
            best, best_row = float(values[k]), rows[k]
        spread = math.sqrt(spread)
    return best


def _configuration(structure: HubStructure, problem: Problem, assignment, picks) -> tuple[dict, dict]:
    """Option index per dim and kept flag per block of a hub assignment plus one front row (or None) per group."""
    choice = {d.name: d.full_index for d in problem.dims}
    for d, k in zip(structure.hub, assignment):
        choice[d] = int(k)
    kept = {}
    for group, front, row in zip(structure.groups, _fronts(structure, assignment), picks):
        kept[group.name] = row is not None
        if row is not None:
            for d, k in zip(group.private, front.private_index[row]):
                choice[d] = int(k)
    return choice, kept


def _solve_knapsack_dp(structure, assignment, budget, slack, best_value, fits):
    """Exact knapsack of one hub assignment by Pareto-state DP; None unless it beats ``best_value``.
    ``fits(picks)`` is the exact latency test for selections within ``slack`` of the budget."""
    base_latency, base_importance = structure.base_at(assignment)
    result = solve_mckp([f.knapsack for f in _fronts(structure, assignment)], budget - base_latency,
                        best_value - base_importance, slack=slack, accept=fits)
    if result is None:
        return None
    value, picks = result
    return base_importance + value, picks


def _solve_knapsack(structure, assignment, limit, time_limit, threads, verbose, run_highs, caps=None,
                    best_value=-math.inf):
    """Exact MCKP for one hub assignment by HiGHS: one item (or removal) per block within the residual budget
    (and caps). HiGHS gets ``best_value`` as a cutoff: a branch that cannot beat it is proven so without
    finding its optimum (most branches that reach this point are near-ties)."""
    import pyomo.environ as pyo
    from pyomo.core.expr.numeric_expr import LinearExpression

    model = pyo.ConcreteModel()
    model.pick = pyo.VarList(domain=pyo.Binary)
    model.rows = pyo.ConstraintList()
    lat_coefs, imp_coefs, variables, owners = [], [], [], []
    count_coefs: dict[str, list] = {name: [] for name in (caps or {})}
    base_latency, base_importance = structure.base_at(assignment)
    base_counts = structure.base_counts_at(assignment)
    for g, (group, front) in enumerate(zip(structure.groups, _fronts(structure, assignment))):
        picks = [model.pick.add() for _ in range(front.latency.size)]
        if not picks and not group.removable:
            return None
        ones = [1.0] * len(picks)
        expr = LinearExpression(constant=0.0, linear_coefs=ones, linear_vars=picks)
        model.rows.add(expr <= 1 if group.removable else expr == 1)
        lat_coefs += front.latency.tolist()
        imp_coefs += front.importance.tolist()
        for name in count_coefs:
            count_coefs[name] += front.counts[name].tolist()
        variables += picks
        owners += [(g, r) for r in range(front.latency.size)]
    model.budget = pyo.Constraint(expr=LinearExpression(constant=0.0, linear_coefs=lat_coefs,
                                                        linear_vars=variables) <= limit - base_latency)
    model.caps = pyo.ConstraintList()
    for name, coefs in count_coefs.items():
        model.caps.add(LinearExpression(constant=0.0, linear_coefs=coefs, linear_vars=variables)
                       <= caps[name] - base_counts[name])
    # Minimise the importance lost (HiGHS's cutoff, objective_bound, is an upper limit when minimising).
    model.objective = pyo.Objective(expr=LinearExpression(constant=0.0, linear_coefs=[-c for c in imp_coefs],
                                                          linear_vars=variables), sense=pyo.minimize)
    options = {}
    if best_value > -math.inf:
        options["objective_bound"] = -(best_value - base_importance)
    result, _ = run_highs(model, time_limit, 0.0, threads, verbose, options)
    if result.incumbent_objective is None:
        return None
    result.solution_loader.load_vars()
    picks: list = [None] * len(structure.groups)
    for var, (g, row) in zip(variables, owners):
        if var.value is not None and var.value > 0.5:
            picks[g] = row
    value = base_importance + sum(imp for imp, var in zip(imp_coefs, variables)
                                  if var.value is not None and var.value > 0.5)
    return value, picks
