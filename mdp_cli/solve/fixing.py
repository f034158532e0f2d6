"""Options that cannot beat a known configuration, by Lagrangian bounds: handed to HiGHS as fixed variables.

With capped counts the MILP is max importance s.t. latency <= budget, params <= cap, FLOPs <= cap. For
multipliers w = (lam, mu_params, mu_flops) >= 0, ``w . limits + max over every configuration of
(importance - w . (latency, params, flops))`` bounds every configuration within the limits from above
(weak duality), and so does the same maximum taken only over configurations that use a given option (one
hub dim's value, one block configuration at one interface value, a block removed). An option whose bound,
under any row of multipliers, is below the value of a configuration already known to fit (the start) is in
no configuration better than it: fixing it out leaves the optimum in the model. The maxima come from the
hub Lagrangian of the decomposition (decompose.py) spelled out over the whole hub, so this applies where
the hub is small (ResNets and ViTs at the paper's granularity); elsewhere nothing is fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys

import numpy as np

from mdp_cli.solve.decompose import (BUDGET_SLACK, HubStructure, _flat_value, _group_table, _hub_tables,
                                     _prepare_bounds, analyse)
from mdp_cli.solve.problem import Problem

# The whole hub is spelled out (rows x assignments floats): at most this many assignments.
MAX_HUB_ASSIGNMENTS = 1 << 20
# Rows of multipliers used (those of least dual value among the ones fitted to the limits).
ROWS = 8


@dataclasses.dataclass
class Fixing:
    """What the bounds rule out: per dim the option indices still allowed (dims absent: all), and per
    removable block whether it must stay (True) or must go (False); absent: free."""

    allowed: dict[str, set[int]]
    kept: dict[str, bool]
    root_bound: float  # the least dual value over the rows: an upper bound on the optimum

    def removed_options(self, problem: Problem) -> int:
        return sum(len(d.options) - len(self.allowed[d.name]) for d in problem.dims if d.name in self.allowed)


def hub_for_fixing(problem: Problem, caps: tuple[str, ...], blocks: bool = True) -> HubStructure | None:
    """The hub structure carrying the capped counts, built once per problem; None where the hub is too
    large to spell out (or the problem does not decompose): then nothing is fixed."""
    # Every configuration, not only the Pareto-optimal ones: a bound needs no filter (it costs seconds on
    # ViTs), and a dominated configuration's bound is at most its dominator's.
    structure = analyse(problem, problem, blocks, tuple(sorted(caps)), pareto=False)
    return None if structure is None or structure.assignments > MAX_HUB_ASSIGNMENTS else structure


def fix_by_bounds(structure: HubStructure, budget: float, caps: dict[str, float], value: float,
                  weights: np.ndarray | None = None) -> Fixing | None:
    """The options that no configuration within ``budget`` and ``caps`` better than ``value`` uses.
    ``weights``: rows of multipliers (latency, then the counts in sorted order), e.g. the LP's duals;
    by default those fitted by the hub search."""
    problem, names = structure.problem, structure.resources
    limits = np.array([budget * (1 + BUDGET_SLACK)] + [caps[name] for name in names])
    if weights is None:
        weights = _prepare_bounds(structure, limits).multipliers[:ROWS]
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    offset = weights @ limits
    tables = _hub_tables(structure, weights)
    total = sum(tables) + np.zeros((weights.shape[0],) + structure.hub_shape)
    # Ruled out only when the bound is clearly below the value (rounding of the sums is far smaller).
    threshold = value - 1e-9 * max(1.0, abs(value))
    hub = structure.hub
    allowed: dict[str, set[int]] = {}
    for axis, dim in enumerate(hub):
        others = tuple(1 + i for i in range(len(hub)) if i != axis)
        bound = (total.max(axis=others) + offset[:, None]).min(axis=0)
        allowed[dim] = set(np.flatnonzero(bound >= threshold).tolist())
    kept: dict[str, bool] = {}
    for group in structure.groups:
        configs = group.configs
        axes = tuple(1 + i for i, d in enumerate(hub) if d not in group.interface)
        best_with = total.max(axis=axes, keepdims=True) if axes else total  # (row, hub with 1 off the interface)
        own = _group_table(group, problem, weights).reshape(
            (weights.shape[0],) + tuple(n if d in group.interface else 1 for d, n in zip(hub, structure.hub_shape)))
        rest = (best_with - own).reshape(weights.shape[0], -1)  # (row, interface value): the others at their best
        values = configs.importance[None, :] - weights[:, :1] * configs.latency[None, :]
        for r, name in enumerate(sorted(configs.resources)):
            values = values - weights[:, 1 + r, None] * configs.resources[name][None, :]
        bound = (offset[:, None] + rest[:, configs.interface_index] + values).min(axis=0)
        alive = bound >= threshold
        for axis, dim in enumerate(group.private):
            allowed[dim] = set(np.unique(configs.private_index[alive, axis]).tolist())
        if group.removable:
            removal = (offset[:, None] + rest).min(axis=0).max() >= threshold
            if not removal:
                kept[group.name] = True
            elif not alive.any():
                kept[group.name] = False
                for dim in group.private:  # removed: its private dims are free (nothing depends on them)
                    allowed.pop(dim, None)
    if any(not options for options in allowed.values()):
        return None  # (only if ``value`` is not reachable within the limits: then rule nothing out)
    return Fixing(allowed, kept, float((offset + total.reshape(weights.shape[0], -1).max(axis=1)).min()))


def lagrangian(structure: HubStructure, limits: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """The dual value ``w . limits + max(importance - w . costs)`` at one row of multipliers, and a
    subgradient: ``limits`` minus the costs (latency, counts) of a configuration that attains the max."""
    hub = structure.hub
    tables = _hub_tables(structure, weights[None, :])
    total = (sum(tables) + np.zeros((1,) + structure.hub_shape))[0]
    assignment = tuple(int(i) for i in np.unravel_index(int(np.argmax(total)), structure.hub_shape))
    latency, _ = structure.base_at(assignment)
    counts = structure.base_counts_at(assignment)
    costs = np.array([latency] + [counts[name] for name in structure.resources])
    for group in structure.groups:
        configs = group.configs
        rows = group.rows.get(_flat_value(group, hub, assignment))
        if rows is None or rows.size == 0:
            continue
        own = np.stack([configs.latency[rows]] + [configs.resources[name][rows] for name in sorted(configs.resources)],
                       axis=1)
        values = configs.importance[rows] - own @ weights
        best = int(np.argmax(values))
        if group.removable and values[best] < 0:
            continue  # removed: costs nothing
        costs = costs + own[best]
    return float(weights @ limits + total.max()), limits - costs


def fit_multipliers(structure: HubStructure, limits: np.ndarray, rounds: int = 80,
                    tolerance: float = 1e-7) -> tuple[float, np.ndarray]:
    """Multipliers (latency, counts) that minimise the dual value (convex, piecewise linear in them), by
    Kelley's cutting planes: each evaluation adds the plane its subgradient gives, and the next point
    minimises the planes (a small LP: HiGHS). The variables are scaled so that a unit of each moves the
    dual by about the objective. Returns the least dual value found (an upper bound on the optimum)
    and its multipliers."""
    import highspy

    scale = max(1.0, float(structure.constant_importance) + sum(float(np.max(t)) for t in structure.base_importance) +
                sum(float(np.max(g.configs.importance)) for g in structure.groups if g.configs is not None and g.configs.importance.size))
    unit = scale / limits  # multiplier = u * unit
    n = limits.size
    with _quiet_stdout_fd():  # (HiGHS prints its banner from C++ as it starts)
        lp = highspy.Highs()
    lp.setOptionValue("output_flag", False)
    for _ in range(n):
        lp.addVar(0.0, 1e3)  # u: at most a thousand objectives per limit's worth of a resource
    lp.addVar(-highspy.kHighsInf, highspy.kHighsInf)  # t: the planes' minimum
    lp.changeColCost(n, 1.0)
    u = np.zeros(n)
    best_value, best = math.inf, u * unit
    for _ in range(rounds):
        value, gradient = lagrangian(structure, limits, u * unit)
        if value < best_value:
            best_value, best = value, u * unit
        slope = gradient * unit  # d value / d u
        # t >= value + slope . (u' - u)
        lp.addRow(value - float(slope @ u), highspy.kHighsInf, n + 1, np.arange(n + 1, dtype=np.int32),
                  np.concatenate([-slope, [1.0]]))
        lp.run()
        solution = np.array(lp.getSolution().col_value)
        lower = solution[n]
        if best_value - lower <= tolerance * max(1.0, abs(best_value)):
            break
        u = np.maximum(solution[:n], 0.0)
    return best_value, best


@contextlib.contextmanager
def _quiet_stdout_fd():
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


__all__ = ["Fixing", "fit_multipliers", "fix_by_bounds", "hub_for_fixing", "lagrangian", "MAX_HUB_ASSIGNMENTS"]
