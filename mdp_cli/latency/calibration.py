"""In-network calibration of a latency table: what its terms, timed one by one, cost inside the whole network.

A LUT row times one op alone. Inside the network the same op costs less or more: an activation or a residual
add timed alone pays a whole call and reads a tensor that the network would have in cache (measured: ~1.7x its
in-network cost on CPU, docs/latency.md), and ONNX Runtime fuses conv + add + relu in the whole graph but not in
one op's graph. These biases grow in share as channels are pruned (convs shrink quadratically, elementwise ops
linearly, a call's fixed cost not at all), which is why a plain sum of LUT rows under-predicts how slow a heavily
pruned network stays.

The correction is fitted to whole networks: a few pruned configurations of the very model are exported and
timed in turns with the dense one, in two passes (``calibration_timing.py``), and

    measured(config) ~= sum over kept terms t of  max(0, scale[class(t)] * table_t(config) + overhead)
                                                  + weight_cost * weights_t(config)

is fitted by bounded least squares on relative residuals, with one scale per op class present (``compute``:
convs, linears, attention, MLPs; ``memory``: elementwise and normalisation ops, pools, concatenation), one
per-term ``overhead`` (a kept term's fixed cost, gated with its block like the term; negative where a term
timed alone pays more per call than it costs in the network, and then no entry below 0) and, where the problem
counts weights, one ``weight_cost`` (an op timed alone keeps its weights in cache; a whole network streams
them from memory). Applied to a problem, every table becomes ``max(0, scale * table + overhead) + weight_cost
* weights``: the solver's model stays a sum of terms, and a calibrated
problem is a plain ``mdp.problem`` (its provenance records the calibration). The shape is fitted on fractions
of dense and used only where it predicts unseen configurations clearly better than the plain table; the level
always: the dense network measured in turns, so that a budget in ms means the network's ms. Torch-free.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mdp_cli.artifacts import is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import SchemaError
from mdp_cli.solve.problem import Problem

SCHEMA = "mdp.calibration"
VERSION = 2  # 2: weight_cost (v1 files read as weight_cost 0)
# Which configurations are timed and how the correction is fitted: raised whenever either changes, so that a
# cached calibration (``mdp run``) from another method is fitted again rather than kept (4: configurations
# even in log of the fraction of dense, the overhead free to zero small entries, a cost per weight; 5: 16
# configurations, timed in two passes whose disagreement is the measurement's; both 2026-12-05)
METHOD = 5
CLASSES = ("compute", "memory")
# Ops whose cost is a pass over memory rather than arithmetic: timed alone they pay what the network amortises.
MEMORY_OPS = frozenset({"add", "mul", "cat", "bn", "act", "scalar", "maxpool", "avgpool", "adaptive_avgpool", "mean",
                        "ln2d", "layernorm", "scale", "permute"})
# A class's scale relative to the first class's outside this range means the table and the network disagree
# beyond what call cost and fusion explain (a wrong table or a broken measurement): the fit is held at the
# bound and the report says so.
SCALE_BOUNDS = (0.05, 4.0)
# A fit is used only where the plain table errs beyond timing noise (median error of the fraction of dense
# over NOISE_FLOOR, or over what the calibration's own measurement moved between the first and second half of
# its rounds, where that is larger) and the fit, predicting configurations it was not fitted on (leave one
# out), errs at most ACCEPT_RATIO of that: else the table stands as measured (a fit to noise helps nobody; on
# a machine whose measurement moves by 5-30 % within minutes a fit accepted on one window made the next
# window's predictions worse, docs/latency.md §4). The floor was 4 % while networks were timed alternately
# (their halves 2-5 % apart); timed as deployed they are 0.4-1 % apart, and on the stored benches every
# decision 3 % changed used a fit that was better on the bench's own configurations, median, worst and below
# 40 % of dense (docs/latency.md §4).
NOISE_FLOOR = 0.03
ACCEPT_RATIO = 0.7
# The same test is also made on the configurations below HIGH_PRUNING of dense alone (at least
# MIN_HIGH_PRUNING of them), and passing either uses the fit: the median over configurations spread from 90 %
# to 10 % of dense hides a table that errs only where aggressive budgets search (ResNet-50 @ 64 px timed as
# deployed: +5 to +24 % below 25 % of dense, 1.5-3.4 % median over all eight; docs/latency.md §4).
HIGH_PRUNING = 0.4
MIN_HIGH_PRUNING = 3
# The calibration's configurations reach from LIGHTEST of dense down to the smallest network the space allows,
# but not below HEAVIEST: a ViT with every block removed is its patch embedding and head, 0.2 % of DeiT-S, and
# a spread down there put half of thirty configurations below 2 % of dense, where no accuracy survives and
# timing is per-call overhead (docs/latency.md §3)
LIGHTEST = 0.9
HEAVIEST = 0.05


def term_class(op: str) -> str:
    return "memory" if op in MEMORY_OPS else "compute"


@dataclasses.dataclass(frozen=True)
class Configuration:
    """A configuration in the problem's terms: option index per dim (missing: full) and kept flag per block."""

    choice: Mapping[str, int]
    kept: Mapping[str, bool]


@dataclasses.dataclass(frozen=True)
class Calibration:
    scales: Mapping[str, float]      # class -> multiplier of the table
    overhead: float                  # added to every kept term, in the problem's units
    term_classes: Mapping[str, str]  # term name -> class
    fit: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the report: errors before/after, configs
    weight_cost: float = 0.0         # per weight a kept term holds, in the problem's units

    def apply(self, problem: Problem, source: str = "") -> Problem:
        """The problem with every term's table replaced by ``max(0, scale[class] * table + overhead)
        + weight_cost * params`` (its weights at each option)."""
        missing = [t.name for t in problem.terms if t.name not in self.term_classes]
        if missing:
            raise SchemaError(f"{source or 'calibration'}: no class for term {missing[0]} "
                              f"(calibrated for another model or space); re-run 'mdp calibrate' for this problem")
        if self.weight_cost and not problem.has_resource("params"):
            raise SchemaError(f"{source or 'calibration'}: it charges a cost per weight, and the problem has no weight "
                              f"counts; build the problem with them ('mdp problem' does) or re-run 'mdp calibrate'")
        terms = [dataclasses.replace(t, table=calibrated_entries(np.asarray(t.table, float),
                                                                 self.scales[self.term_classes[t.name]], self.overhead)
                                     + self.weight_cost * np.asarray(t.resources.get("params", 0.0), float))
                 for t in problem.terms]
        constant = self.scales["compute"] * problem.constant_latency
        record = {"file": source, "scales": dict(self.scales), "overhead": self.overhead,
                  "weight_cost": self.weight_cost,
                  "median_error_before": self.fit.get("median_error_before"),
                  "median_error_after": self.fit.get("median_error_after")}
        return dataclasses.replace(problem, terms=terms, constant_latency=constant, provenance={**problem.provenance, "calibration": record})

    def fitted(self) -> "Calibration":
        """The fit's own scales, overhead and cost per weight, whether or not its rule uses them (benchmarks
        compare both)."""
        return dataclasses.replace(self, scales=dict(self.fit["fitted_scales"]), overhead=self.fit["fitted_overhead"],
                                   weight_cost=self.fit.get("fitted_weight_cost", 0.0))

    def to_dict(self, **provenance_fields: Any) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "provenance": provenance(**provenance_fields),
                "scales": dict(self.scales), "overhead": self.overhead, "weight_cost": self.weight_cost,
                "term_classes": dict(self.term_classes),
                "fit": dict(self.fit)}

    def save(self, path: str | Path, **provenance_fields: Any) -> None:
        write_json(path, self.to_dict(**provenance_fields))


def read_calibration(path: str | Path) -> Calibration:
    """``mdp.calibration`` v1 or v2, validated (docs/schemas.md)."""
    data = read_json(path, SCHEMA, VERSION)

    def fail(field: str, what: str) -> SchemaError:
        return SchemaError(f"{path}: field '{field}' {what}; re-run 'mdp calibrate'")

    scales = data.get("scales")
    if not isinstance(scales, dict) or set(scales) != set(CLASSES):
        raise fail("scales", f"must map exactly {list(CLASSES)} to numbers")
    for name, value in scales.items():
        if not is_finite_number(value) or not value > 0:
            raise fail(f"scales.{name}", "must be a positive number")
    if not is_finite_number(data.get("overhead")):
        raise fail("overhead", "must be a finite number")
    weight_cost = data.get("weight_cost", 0.0) if data["version"] < 2 else data.get("weight_cost")
    if not is_finite_number(weight_cost) or weight_cost < 0:
        raise fail("weight_cost", "must be a number >= 0")
    classes = data.get("term_classes")
    if not isinstance(classes, dict) or not classes or any(c not in CLASSES for c in classes.values()):
        raise fail("term_classes", f"must map term names to one of {list(CLASSES)}")
    fit = data.get("fit", {})
    if not isinstance(fit, dict):
        raise fail("fit", "must be an object")
    return Calibration({k: float(v) for k, v in scales.items()}, float(data["overhead"]), dict(classes), fit,
                       float(weight_cost))


def _full_choice(problem: Problem, config: Configuration) -> dict[str, int]:
    return {d.name: int(config.choice.get(d.name, d.full_index)) for d in problem.dims}


def features(problem: Problem, term_classes: Mapping[str, str], config: Configuration) -> np.ndarray:
    """[sum of compute tables, sum of memory tables, number of terms] over the terms a configuration keeps (the
    problem's constant latency, what nothing prunes, counts as compute)."""
    return _feature_rows(problem, *kept_entries(problem, term_classes, [config]))[0]


def _feature_rows(problem: Problem, entries: np.ndarray, kept: np.ndarray, term_class_index: np.ndarray) -> np.ndarray:
    """``features`` of every configuration from ``kept_entries``' output."""
    rows = np.zeros((len(entries), len(CLASSES) + 1))
    for i in range(len(CLASSES)):
        rows[:, i] = entries[:, term_class_index == i].sum(axis=1)
    rows[:, CLASSES.index("compute")] += problem.constant_latency
    rows[:, -1] = kept.sum(axis=1)
    return rows


def calibrated_entries(table: np.ndarray, scale: float, overhead: float) -> np.ndarray:
    """A term's calibrated latency: its table scaled and shifted by the per-term overhead, and never below 0. The
    overhead may be negative, and more so than the smallest entry: in ONNX Runtime a session's call costs more
    per node than the node costs inside a whole graph, where residual adds and activations fuse into the convs
    and cost next to nothing, and the table of a ResNet has entries of 0 µs (docs/latency.md §4)."""
    return np.maximum(0.0, scale * table + overhead)


def kept_entries(problem: Problem, term_classes: Mapping[str, str],
                 configs: Sequence[Configuration]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every term's table entry in each configuration (configurations x terms; 0 where its block is removed),
    whether it is kept, and each term's class index: what a calibration's prediction sums."""
    entries = np.zeros((len(configs), len(problem.terms)))
    kept = np.zeros((len(configs), len(problem.terms)), dtype=bool)
    for k, config in enumerate(configs):
        choice = _full_choice(problem, config)
        for j, term in enumerate(problem.terms):
            if term.block is None or config.kept.get(term.block, True):
                entries[k, j] = float(term.table[tuple(choice[d] for d in term.dims)])
                kept[k, j] = True
    return entries, kept, np.array([CLASSES.index(term_classes[t.name]) for t in problem.terms], dtype=int)


def _fractions(values: np.ndarray) -> np.ndarray:
    return values / values[0]


def fraction_errors(predicted: Sequence[float], measured: Sequence[float]) -> list[float]:
    """Predicted fraction of dense over measured fraction of dense, minus 1; configuration 0 is the dense one."""
    p, m = _fractions(np.asarray(predicted, float)), _fractions(np.asarray(measured, float))
    return [float(x) for x in p[1:] / m[1:] - 1.0]


def _thetas(points: np.ndarray, n_free: int) -> np.ndarray:
    """Grid points (log-scales of the classes after the first, overhead) as parameter rows (scales, overhead)."""
    ones = np.ones((len(points), 1))
    return np.hstack([ones, np.exp(points[:, :n_free]), points[:, n_free:]])


def _polish(cost, point: np.ndarray, value: float, limits, steps: int = 20) -> np.ndarray:
    """Local descent from a grid point: finite-difference Newton steps on the cost, each kept only
    if it lowers it, within the limits (the grid found the basin; this removes the grid's rounding)."""
    for _ in range(steps):
        h = 1e-6 * np.maximum(1.0, np.abs(point))
        n = len(point)
        grad, hess = np.zeros(n), np.zeros((n, n))
        for i in range(n):
            e_i = np.eye(n)[i] * h[i]
            grad[i] = (cost(point + e_i) - cost(point - e_i)) / (2 * h[i])
            for j in range(n):
                e_j = np.eye(n)[j] * h[j]
                hess[i, j] = (cost(point + e_i + e_j) - cost(point + e_i - e_j) - cost(point - e_i + e_j)
                              + cost(point - e_i - e_j)) / (4 * h[i] * h[j])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return point
        candidate = np.clip(point - step, [lo for lo, _ in limits], [hi for _, hi in limits])
        new = cost(candidate)
        if not new < value:
            return point
        point, value = candidate, new
    return point


def halves_of(samples: Sequence[Sequence[float]]) -> tuple[list[float], tuple[list[float], list[float]]]:
    """Per configuration, the median of its samples (taken in rounds, in time order) and the medians of the
    first and the second half of them: what ``fit_calibration`` takes as ``measured`` and ``halves``."""
    medians = [statistics.median(s) for s in samples]
    first = [statistics.median(s[:max(1, len(s) // 2)]) for s in samples]
    second = [statistics.median(s[len(s) // 2:]) for s in samples]
    return medians, (first, second)


def latencies_in_turns(pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
                       ) -> tuple[list[float], tuple[list[float], list[float]]]:
    """``halves_of`` for configurations each timed *in turns with the dense model* (``timing.sample_calls_in_turns``:
    a timed call follows a call of the same network, as deployed and as ``mdp export`` measures). ``pairs``
    holds, per pruned configuration, its samples and the dense model's samples of the same turns, in time
    order. Each configuration's latency is its ratio to the dense model of its own turns times the dense
    model's median over all turns (configuration 0, the dense one, is that median); the halves likewise from
    the first and the second half of the samples."""
    if not pairs or any(not mine or not dense for mine, dense in pairs):
        raise ValueError("every configuration needs samples of its own and of the dense model")

    def level(part) -> list[float]:
        cut = [(part(list(mine)), part(list(dense))) for mine, dense in pairs]
        dense_all = statistics.median([t for _, d in cut for t in d])
        return [dense_all] + [statistics.median(m) / statistics.median(d) * dense_all for m, d in cut]

    return level(lambda s: s), (level(lambda s: s[:max(1, len(s) // 2)]), level(lambda s: s[len(s) // 2:]))


def measurement_disagreement(halves: tuple[Sequence[float], Sequence[float]]) -> float:
    """Median over the pruned configurations of how far the two halves' fractions of dense lie apart, relative:
    how much of a fraction-of-dense error this measurement can tell from its own noise."""
    first, second = (np.asarray(h, float) for h in halves)
    apart = (first[1:] / first[0]) / (second[1:] / second[0])
    return float(np.median(np.abs(np.maximum(apart, 1 / apart) - 1.0)))


def fit_calibration(problem: Problem, term_classes: Mapping[str, str], configs: Sequence[Configuration],
                    measured: Sequence[float],
                    halves: tuple[Sequence[float], Sequence[float]] | None = None) -> Calibration:
    """Fit scales, overhead and cost per weight to whole-network latencies ``measured`` (problem units, one per
    configuration; configuration 0 must be the dense one): the relative errors of the predicted fractions of
    dense are least-squared (``solve`` below). A class with no term keeps scale 1, a problem without weight
    counts gets no cost per weight. The fit's report holds the
    fraction-of-dense errors before and after, and leave-one-out errors (each configuration predicted by a fit
    without it) when there are enough configurations. ``halves`` (``halves_of``): the same latencies measured
    from the first and the second half of the rounds; their disagreement raises the noise floor of the rule
    that decides whether the fit is used."""
    if len(configs) != len(measured) or len(configs) < 3:
        raise ValueError("calibration needs the dense configuration and at least two more, each measured")
    if any(not (m > 0 and math.isfinite(m)) for m in measured):
        raise ValueError(f"measured latencies must be positive numbers, got {list(measured)}")
    if halves is not None and any(len(h) != len(configs) or any(not (v > 0 and math.isfinite(v)) for v in h)
                                  for h in halves):
        raise ValueError("halves must hold one positive latency per configuration, twice")
    entries, kept, term_class_index = kept_entries(problem, term_classes, configs)
    F = _feature_rows(problem, entries, kept, term_class_index)
    y = np.asarray(measured, float)
    present = [i for i, name in enumerate(CLASSES) if any(term_classes[t.name] == name for t in problem.terms)]
    constant = problem.constant_latency
    n_scales = len(present)
    # the weights each configuration keeps: a cost per weight is fitted where the problem counts them
    weights = (np.array([problem.resource("params", _full_choice(problem, c), c.kept) for c in configs])
               if problem.has_resource("params") else np.zeros(len(configs)))
    with_weights = bool(weights[0] > 0)
    # searched as the share of the dense table that the dense network's weights would add (order 1, like the
    # other parameters, for the grid and the finite differences); the cost per weight is that share x per_weight
    per_weight = float(F[0, :len(CLASSES)].sum()) / weights[0] if with_weights else 0.0
    weights_in_table_units = weights * per_weight

    def theta_of(values: np.ndarray) -> tuple[dict[str, float], float, float]:
        scales = {name: 1.0 for name in CLASSES}
        for i, v in zip(present, values[:n_scales]):
            scales[CLASSES[i]] = float(v)
        return scales, float(values[n_scales]), float(values[n_scales + 1]) * per_weight if with_weights else 0.0

    def full_scales(thetas: np.ndarray) -> np.ndarray:
        """Candidates x classes: the candidates' scales, 1 for a class with no term."""
        out = np.ones((len(thetas), len(CLASSES)))
        out[:, present] = thetas[:, :n_scales]
        return out

    def predict(thetas: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Configurations ``rows`` x candidates: the calibrated table's latency, every kept term
        ``max(0, scale * entry + overhead)`` (in chunks of candidates: configurations x terms each), and the
        cost per weight times the weights kept."""
        out = np.empty((len(rows), len(thetas)))
        e, m = entries[rows], kept[rows]
        for start in range(0, len(thetas), 128):
            part = thetas[start:start + 128]
            scales = full_scales(part)
            per_term = np.maximum(0.0, scales[:, term_class_index][:, None, :] * e[None]
                                  + part[:, n_scales, None, None])
            out[:, start:start + 128] = (np.where(m[None], per_term, 0.0).sum(axis=2)
                                         + constant * scales[:, CLASSES.index("compute"), None]).T
        if with_weights:
            out += np.outer(weights_in_table_units[rows], thetas[:, n_scales + 1])
        return out

    ratio = y / y[0]
    # the overhead's range: a mean term either way (below the smallest entry the calibrated entries stop at 0)
    mean_term = float(F[0, :len(CLASSES)].sum()) / max(float(F[0, -1]), 1.0)
    low, high = -mean_term, mean_term
    # the weights' share: from none up to twice the dense network's table
    weight_limit = 2.0

    def errors_of(predicted: np.ndarray, pruned: np.ndarray) -> np.ndarray:
        """Mean squared relative error of the predicted fractions of dense over the candidates (the trailing
        axes of ``predicted``; its first is the dense configuration, then ``pruned``)."""
        ok = np.all(predicted > 0, axis=0)  # a large negative overhead can zero a whole network: no candidate
        shape = (len(pruned),) + (1,) * (predicted.ndim - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            errors = (predicted[1:] / predicted[0]) / ratio[pruned].reshape(shape) - 1.0
        return np.where(ok, np.mean(errors ** 2, axis=0), np.inf)

    def fraction_cost(thetas: np.ndarray, pruned: np.ndarray) -> np.ndarray:
        """The fraction errors' mean square for each row of ``thetas``."""
        return errors_of(predict(thetas, np.r_[0, pruned]), pruned)

    def grid_costs(axes: Sequence[np.ndarray], pruned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every combination of the axes' values and its cost. The weight cost adds to a prediction outside
        the clamp, so the terms are summed once per (scales, overhead) and the weight axis broadcast onto them."""
        if not with_weights:
            grid = np.array(list(itertools.product(*axes)))
            return grid, fraction_cost(_thetas(grid, n_scales - 1), pruned)
        inner = np.array(list(itertools.product(*axes[:-1])))
        rows = np.r_[0, pruned]
        no_weight = _thetas(np.hstack([inner, np.zeros((len(inner), 1))]), n_scales - 1)
        summed = predict(no_weight, rows)  # configurations x inner
        costs = errors_of(summed[:, :, None] + weights_in_table_units[rows, None, None] * axes[-1][None, None, :],
                          pruned)
        grid = np.hstack([np.repeat(inner, len(axes[-1]), axis=0), np.tile(axes[-1], len(inner))[:, None]])
        return grid, costs.ravel()

    def solve(rows: np.ndarray) -> np.ndarray:
        """Fit in fractions of dense (what budgets are), where a common factor is invisible: the first class's
        scale is held at 1, the other's (log-spaced within SCALE_BOUNDS), the overhead and the weights' share are
        searched on a grid that zooms in on the best point four times (three parameters at most, 41 values
        each: exact enough, and it cannot run off like a local method on a flat valley), then polished; then
        everything is scaled so that the dense configuration predicts its measured latency."""
        pruned = np.array([r for r in rows if r != 0])
        n_free = len(present) - 1
        limits = ([(math.log(SCALE_BOUNDS[0]), math.log(SCALE_BOUNDS[1]))] * n_free + [(low, high)]
                  + ([(0.0, weight_limit)] if with_weights else []))
        ranges = list(limits)
        best = np.zeros(len(limits))  # the uncalibrated table: log-scale 0, no overhead, no cost per weight
        best_cost = float(fraction_cost(_thetas(best[None, :], n_free), pruned)[0])
        for _ in range(5):
            grid, costs = grid_costs([np.linspace(lo, hi, 41) for lo, hi in ranges], pruned)
            k = int(np.argmin(costs))
            if costs[k] < best_cost:
                best, best_cost = grid[k], float(costs[k])
            ranges = [(max(lo0, b - (hi - lo) / 8), min(hi0, b + (hi - lo) / 8))
                      for b, (lo, hi), (lo0, hi0) in zip(best, ranges, limits)]
        best = _polish(lambda p: float(fraction_cost(_thetas(p[None, :], n_free), pruned)[0]), best, best_cost, limits)
        theta = _thetas(best[None, :], n_free)[0]
        return theta * (y[0] / float(predict(theta[None, :], np.array([0]))[0, 0]))

    every = np.arange(len(configs))
    theta = solve(every)
    scales, overhead, weight_cost = theta_of(theta)

    before = fraction_errors(F[:, :len(CLASSES)].sum(axis=1), y)
    after = fraction_errors(predict(theta[None, :], every)[:, 0], y)
    fit: dict[str, Any] = {
        "configurations": len(configs), "measured": [float(v) for v in y],
        "predicted_before": [float(v) for v in F[:, :len(CLASSES)].sum(axis=1)],
        "predicted_after": [float(v) for v in predict(theta[None, :], every)[:, 0]],
        "median_error_before": statistics.median(abs(e) for e in before),
        "worst_error_before": max(abs(e) for e in before),
        "median_error_after": statistics.median(abs(e) for e in after),
        "worst_error_after": max(abs(e) for e in after),
        "errors_before": [float(e) for e in before], "errors_after": [float(e) for e in after],
        "at_bound": [CLASSES[i] for i, v in zip(present[1:], theta[1:n_scales] / theta[0])
                     if min(abs(v - b) for b in SCALE_BOUNDS) < 1e-9],
    }
    if len(configs) >= 5:
        # leave one pruned configuration out: how well the fit predicts a configuration it has not seen
        held_out = []
        for k in range(1, len(configs)):
            rows = np.array([i for i in every if i != k])
            values = solve(rows)
            dense_now, this = predict(values[None, :], np.array([0, k]))[:, 0]
            held_out.append((this / dense_now) / (y[k] / y[0]) - 1.0)
        fit["median_error_held_out"] = float(statistics.median(abs(e) for e in held_out))
        fit["worst_error_held_out"] = float(max(abs(e) for e in held_out))
        fit["errors_held_out"] = [float(e) for e in held_out]
    if halves is not None:
        fit["measurement_disagreement"] = measurement_disagreement(halves)
        # the machine moved more within seconds than a table is allowed to err: no prediction can be checked here
        fit["measurement_noisy"] = fit["measurement_disagreement"] > NOISE_FLOOR
    fit["noise_floor"] = noise_floor(fit, NOISE_FLOOR)

    high_pruning = high_pruning_report(fit)
    if high_pruning is not None:
        fit["high_pruning"] = high_pruning
    fit["accepted_on"] = accepted_on(fit, NOISE_FLOOR)
    fit["accepted"] = fit["accepted_on"] is not None
    fit["fitted_scales"], fit["fitted_overhead"], fit["fitted_weight_cost"] = dict(scales), overhead, weight_cost
    fit["weights_share"] = float(weight_cost * weights[0] / y[0])  # of the dense network's latency
    # the whole network measured at this level over the sum of its terms (isolated ops run hotter in cache):
    # a common factor, invisible in fractions of dense, that makes budgets in ms mean what they say
    fit["level"] = float(y[0] / F[0, :len(CLASSES)].sum())
    if not fit["accepted"]:
        # the table's shape, at that level
        scales, overhead, weight_cost = {name: fit["level"] for name in CLASSES}, 0.0, 0.0
    return Calibration(scales, overhead, dict(term_classes), fit, weight_cost)


def high_pruning_report(fit: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plain and leave-one-out median errors over the configurations below HIGH_PRUNING of dense (measured),
    from a fit's report; None with fewer than MIN_HIGH_PRUNING of them or without leave-one-out errors."""
    measured = fit["measured"]
    high = [k for k in range(1, len(measured)) if measured[k] / measured[0] < HIGH_PRUNING]
    if "errors_held_out" not in fit or len(high) < MIN_HIGH_PRUNING:
        return None
    return {"configurations": len(high),
            "median_error_before": float(statistics.median(abs(fit["errors_before"][k - 1]) for k in high)),
            "median_error_held_out": float(statistics.median(abs(fit["errors_held_out"][k - 1]) for k in high))}


def noise_floor(fit: Mapping[str, Any], floor: float) -> float:
    """The rule's floor: ``floor``, raised to how far the calibration's own halves moved where that is larger."""
    return max(floor, fit.get("measurement_disagreement", 0.0))


def accepted_on(fit: Mapping[str, Any], fixed_floor: float) -> str | None:
    """The rule: "all" where the plain table errs over the noise floor (``fixed_floor`` or the halves'
    disagreement, the larger; median over all configurations) and the fit, on configurations it did not see,
    at most ACCEPT_RATIO of that; else "high_pruning" where the same holds below HIGH_PRUNING of dense; else
    None (the table stays as measured). A pure function of the fit's report, so a stored calibration can be
    re-decided at another fixed floor (scripts/calibration_rule_replay.py)."""
    floor = noise_floor(fit, fixed_floor)

    def clearly_better(before: float, held: float | None) -> bool:
        return held is not None and before > floor and held <= ACCEPT_RATIO * before

    if clearly_better(fit["median_error_before"], fit.get("median_error_held_out")):
        return "all"
    sub = fit.get("high_pruning") or high_pruning_report(fit)
    if sub and clearly_better(sub["median_error_before"], sub["median_error_held_out"]):
        return "high_pruning"
    return None


def smallest_fraction(problem: Problem) -> float:
    """The table's latency of the smallest network the space allows (every width at its smallest option, every
    removable block removed), as a fraction of dense."""
    smallest = problem.latency({d.name: 0 for d in problem.dims},
                               {b.name: False for b in problem.blocks if b.removable})
    return smallest / problem.dense_latency


def target_fractions(problem: Problem, count: int) -> list[float]:
    """Where the pruned calibration configurations aim, as fractions of dense by the table: evenly in log from
    LIGHTEST down to the smallest network the space allows or HEAVIEST, whichever is larger. Budgets see
    relative errors, so every scale counts alike; a spread even in widths put two of eight ResNet-50
    configurations below 15 % of dense, where the table's remaining error sits, and fits on it met the latency
    targets less often (docs/latency.md §3, "The calibration's spread")."""
    lowest = min(LIGHTEST, max(HEAVIEST, smallest_fraction(problem)))
    return [LIGHTEST * (lowest / LIGHTEST) ** (k / max(1, count - 1)) for k in range(count)]


def random_configurations(problem: Problem, count: int, seed: int = 0) -> list[Configuration]:
    """The dense configuration and ``count`` pruned ones, each put by the table at its ``target_fractions`` of
    dense: widths jittered per dim around a common keep ratio and some removable blocks removed (both drawn once
    per configuration), the keep ratio found by bisection; where the widths alone leave the network above its
    target, more blocks removed, in an order of its own, until the table puts it there or none is left."""
    import random

    rng = random.Random(seed)
    removable = [b.name for b in problem.blocks if b.removable]
    configs = [Configuration({}, {})]
    for k, fraction in enumerate(target_fractions(problem, count)):
        jitter = {dim.name: rng.uniform(-1.0, 1.0) for dim in problem.dims}
        draw = {name: rng.random() for name in removable}

        def at(keep: float) -> tuple[dict[str, int], dict[str, bool]]:
            choice = {dim.name: min(len(dim.options) - 1, max(0, round(keep * len(dim.options) + jitter[dim.name]) - 1))
                      for dim in problem.dims}
            return choice, {name: draw[name] >= (1 - keep) / 3 for name in removable}

        target = fraction * problem.dense_latency
        choice, kept = at(0.0)
        if problem.latency(choice, kept) <= target:
            low, high = 0.0, 1.0  # the table's latency grows with the keep ratio (up to the jitter's rounding)
            for _ in range(24):
                middle = (low + high) / 2
                if problem.latency(*at(middle)) > target:
                    high = middle
                else:
                    low = middle
            choice, kept = min((at(low), at(high)), key=lambda c: abs(math.log(problem.latency(*c) / target)))
        else:
            # A network whose thin widths still pay every op's fixed cost (MobileNetV2 at 64 px bottoms out near
            # half of dense) reaches the high-pruning regime only by removing blocks
            spare = sorted(name for name, on in kept.items() if on)
            # an order of its own, not drawn from rng: the other configurations stay as they were
            random.Random(f"{seed}:{k}").shuffle(spare)
            while spare and problem.latency(choice, kept) > target:
                kept[spare.pop()] = False
        configs.append(Configuration(choice, kept))
    return configs
