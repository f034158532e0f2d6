"""Exact multiple-choice knapsack by Pareto-state dynamic programming with LP-bound pruning.

The hub decomposition leaves, per hub assignment, a multiple-choice knapsack (one configuration per block,
or removal; total latency within the residual budget; maximise importance). Latencies are real numbers,
so a capacity-indexed DP does not apply; a general MIP solver proves these knapsacks slowly because many
combinations tie to within 1e-6. This solver is exact on real weights: it merges the blocks one at a time
into the set of partial selections that no other partial selection beats on both latency and importance
(the Nemhauser-Ullmann scheme), and drops a partial selection as soon as even the LP relaxation of the
blocks still to come cannot lift it to the best complete selection known. Every dropped state is
dominated or bounded out, so the best surviving complete selection is optimal.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(eq=False)
class KnapsackGroup:
    latency: np.ndarray  # the group's items (a Pareto front: latency ascending, importance ascending)
    importance: np.ndarray
    removable: bool  # removal (zero latency, zero importance) allowed
    # Items with removal and the upper concave hull, computed once: the hub search meets the same group
    # (one block at one interface value) in many hub assignments and at every budget.
    _items: tuple | None = dataclasses.field(default=None, repr=False)
    _hull: tuple | None = dataclasses.field(default=None, repr=False)

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items as arrays plus their original index (-1 = removal)."""
        if self._items is None:
            index = np.arange(self.latency.size)
            if self.removable:
                self._items = (np.concatenate([[0.0], self.latency]), np.concatenate([[0.0], self.importance]),
                               np.concatenate([[-1], index]))
            else:
                self._items = (np.asarray(self.latency, float), np.asarray(self.importance, float), index)
        return self._items

    def hull(self) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
        """(least latency, most importance at it, slopes, latency steps, importance steps) of the upper
        concave hull from the cheapest item; empty group: least latency inf."""
        if self._hull is None:
            latency, importance, _ = self.items()
            if latency.size == 0:
                self._hull = (np.inf, -np.inf, np.zeros(0), np.zeros(0), np.zeros(0))
            else:
                least, best = _cheapest(latency, importance)
                segments = np.asarray(_hull_segments(latency, importance), dtype=float).reshape(-1, 3)
                self._hull = (least, best, segments[:, 0], segments[:, 1], segments[:, 2])
        return self._hull


def _hull_segments(latency: np.ndarray, importance: np.ndarray) -> list[tuple[float, float, float]]:
    """Segments of the upper concave hull of a front (from its cheapest item): (slope, d_lat, d_imp)."""
    order = np.lexsort((-importance, latency))
    latency, importance = latency[order].tolist(), importance[order].tolist()
    hull = [0]
    for i in range(1, len(latency)):
        if importance[i] <= importance[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (importance[b] - importance[a]) * (latency[i] - latency[a]) <= (importance[i] - importance[a]) * (latency[b] - latency[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    segments = []
    for a, b in zip(hull, hull[1:]):
        d_lat, d_imp = latency[b] - latency[a], importance[b] - importance[a]
        segments.append((d_imp / d_lat if d_lat > 0 else np.inf, d_lat, d_imp))
    return segments


def _cheapest(latency: np.ndarray, importance: np.ndarray) -> tuple[float, float]:
    """The least latency and the most importance reachable at exactly that latency."""
    least = float(latency.min())
    return least, float(importance[latency == least].max())


class _SuffixBound:
    """LP bound of some groups as a concave piecewise-linear function of the budget left for them."""

    def __init__(self, groups: list[KnapsackGroup] | None = None, minimum=0.0, base=0.0, x=None, y=None):
        if groups is not None:
            hulls = [g.hull() for g in groups]
            minimum, base = sum(h[0] for h in hulls), sum(h[1] for h in hulls)
            slopes = np.concatenate([h[2] for h in hulls] or [np.zeros(0)])
            order = np.argsort(-slopes, kind="stable")
            x = np.concatenate([[0.0], np.cumsum(np.concatenate([h[3] for h in hulls] or [np.zeros(0)])[order])])
            y = np.concatenate([[0.0], np.cumsum(np.concatenate([h[4] for h in hulls] or [np.zeros(0)])[order])])
        self.minimum, self.base, self.x, self.y = minimum, base, x, y

    @staticmethod
    def suffixes(groups: list[KnapsackGroup]) -> list["_SuffixBound"]:
        """The bounds of groups[k:] for every k (and the empty suffix), from one sort of all segments:
        suffix k keeps the segments of groups k and later (the others add zero-length steps)."""
        hulls = [g.hull() for g in groups]
        owner = np.concatenate([np.full(h[2].size, k) for k, h in enumerate(hulls)] or [np.zeros(0, int)])
        order = np.argsort(-np.concatenate([h[2] for h in hulls] or [np.zeros(0)]), kind="stable")
        owner = owner[order]
        d_lat = np.concatenate([h[3] for h in hulls] or [np.zeros(0)])[order]
        d_imp = np.concatenate([h[4] for h in hulls] or [np.zeros(0)])[order]
        mask = owner[None, :] >= np.arange(len(groups) + 1)[:, None]
        zero = np.zeros((len(groups) + 1, 1))
        xs = np.concatenate([zero, np.cumsum(d_lat * mask, axis=1)], axis=1)
        ys = np.concatenate([zero, np.cumsum(d_imp * mask, axis=1)], axis=1)
        minima = np.concatenate([np.cumsum([h[0] for h in hulls][::-1])[::-1], [0.0]])
        bases = np.concatenate([np.cumsum([h[1] for h in hulls][::-1])[::-1], [0.0]])
        return [_SuffixBound(None, float(minima[k]), float(bases[k]), xs[k], ys[k]) for k in range(len(groups) + 1)]

    def fits(self, budget_left: np.ndarray) -> np.ndarray:
        """Whether the cheapest completion fits in ``budget_left``, lenient by rounding error (relative):
        an infeasibility test may let a state through, never drop one that fits. The least latency may be
        negative (the linear latency model's tables hold negative entries), so a partial selection over the
        budget can still be completed within it."""
        return budget_left - self.minimum >= -1e-11 * np.maximum(1.0, np.abs(budget_left) + abs(self.minimum))

    def __call__(self, budget_left: np.ndarray) -> np.ndarray:
        slack = budget_left - self.minimum
        value = self.base + np.interp(slack, self.x, self.y)
        return np.where(self.fits(budget_left), value, -np.inf)


def lp_bound(groups: list[KnapsackGroup], capacity: float) -> float:
    """The knapsack's LP relaxation value (the classic greedy over each group's upper concave hull)."""
    if any(g.items()[0].size == 0 for g in groups):
        return -np.inf
    return float(_SuffixBound(groups)(np.asarray(capacity)))


def _greedy_value(groups: list[KnapsackGroup], capacity: float) -> float:
    """Value of the LP solution's integral part: hull segments bought whole in slope order while they fit
    (a group's later segments are skipped once one of its segments is). A feasible selection's value."""
    hulls = [g.hull() for g in groups]
    spend = sum(h[0] for h in hulls)
    if spend > capacity:
        return -np.inf
    value = sum(h[1] for h in hulls)
    segments = [(slope, d_lat, d_imp, g) for g, h in enumerate(hulls) for slope, d_lat, d_imp in zip(*h[2:])]
    blocked = set()
    for _slope, d_lat, d_imp, g in sorted(segments, key=lambda s: -s[0]):
        if g in blocked:
            continue
        if spend + d_lat <= capacity:
            spend += d_lat
            value += d_imp
        else:
            blocked.add(g)
    return value


def solve_mckp(groups: list[KnapsackGroup], capacity: float, lower_bound: float = -np.inf,
               max_states: int = 5_000_000, slack: float = 0.0, accept=None):
    """Maximise total importance with one item per group (or removal where allowed), latency <= capacity.

    Returns (value, picks) with picks[g] the chosen item index of group g or None for removal; or None if
    no selection fits, or none reaches ``lower_bound`` (a value already achieved elsewhere).

    Latencies are summed group by group, so with ``slack=0`` "fits" means that sum is at most
    ``capacity``. A caller whose own latency sums in another order passes ``slack`` (a little more than
    the rounding error of either sum) and ``accept(picks) -> bool``, its exact test: selections within
    ``capacity - slack`` are taken as they are, those in the band up to ``capacity + slack`` only if
    ``accept`` says so."""
    items = [g.items() for g in groups]
    if any(lat.size == 0 for lat, _, _ in items):
        return None
    suffix = _SuffixBound.suffixes(groups)
    tolerance = 1e-9 * max(1.0, abs(lower_bound) if np.isfinite(lower_bound) else 1.0)
    limit = capacity + slack

    # The greedy selection is a safe lower bound only where it fits without the slack.
    lower_bound = max(lower_bound, _greedy_value(groups, capacity - slack) - tolerance)
    latency_states = np.zeros(1)
    value_states = np.zeros(1)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    for k, (lat, imp, original) in enumerate(items):
        total_lat = (latency_states[:, None] + lat[None, :]).ravel()
        total_val = (value_states[:, None] + imp[None, :]).ravel()
        parent = np.repeat(np.arange(latency_states.size), lat.size)
        item = np.tile(np.arange(lat.size), latency_states.size)
        # Not ``total_lat <= limit``: later groups may have negative latencies (linear latency model).
        keep = suffix[k + 1].fits(limit - total_lat)
        optimistic = total_val + suffix[k + 1](limit - total_lat)
        keep &= optimistic >= lower_bound - tolerance
        total_lat, total_val, parent, item = total_lat[keep], total_val[keep], parent[keep], item[keep]
        if total_lat.size == 0:
            return None
        # Pareto filter: cheapest first (ties: most valuable first); keep strict improvements only.
        order = np.lexsort((-total_val, total_lat))
        total_lat, total_val, parent, item = total_lat[order], total_val[order], parent[order], item[order]
        running = np.maximum.accumulate(total_val)
        strict = np.concatenate([[True], total_val[1:] > running[:-1]])
        total_lat, total_val, parent, item = total_lat[strict], total_val[strict], parent[strict], item[strict]
        if total_lat.size > max_states:
            raise MemoryError(f"knapsack state space exceeded {max_states} states")
        latency_states, value_states = total_lat, total_val
        parents.append((parent, item))

    def picks_of(state: int) -> list:
        picks: list = [None] * len(items)
        for k in range(len(items) - 1, -1, -1):
            parent, item = parents[k]
            original = items[k][2][item[state]]
            picks[k] = None if original < 0 else int(original)
            state = parent[state]
        return picks

    # Final states form a Pareto front (latency and value both ascending): try the best first.
    for state in np.argsort(-value_states, kind="stable").tolist():
        value = float(value_states[state])
        if value < lower_bound - tolerance:
            return None
        if latency_states[state] <= capacity - slack or (
                latency_states[state] <= capacity if accept is None else accept(picks_of(state))):
            return value, picks_of(state)
    return None
