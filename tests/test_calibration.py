"""In-network calibration (mdp_cli/latency/calibration.py): the fit recovers a known scale per op class and a
per-term overhead from whole-network latencies, respects its bounds, and a calibrated problem predicts them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mdp_cli.errors import SchemaError
from mdp_cli.latency.calibration import (NOISE_FLOOR, Configuration, fit_calibration, halves_of, latencies_in_turns,
                                         measurement_disagreement,
                                         random_configurations, read_calibration, smallest_fraction,
                                         target_fractions,
                                         term_class)
from mdp_cli.solve.synthetic import resnet_problem


def _classes(problem):
    # every third term is an elementwise op: enough of each class to identify both scales
    return {t.name: ("memory" if i % 3 == 0 else "compute") for i, t in enumerate(problem.terms)}


def _network_latency(problem, classes, config, scales, overhead):
    choice = {d.name: config.choice.get(d.name, d.full_index) for d in problem.dims}
    total = scales["compute"] * problem.constant_latency
    for t in problem.terms:
        if t.block is not None and not config.kept.get(t.block, True):
            continue
        total += scales[classes[t.name]] * float(t.table[tuple(choice[d] for d in t.dims)]) + overhead
    return total


def test_term_classes() -> None:
    assert term_class("add") == term_class("act") == term_class("permute") == "memory"
    assert term_class("conv_bn_act") == term_class("linear") == term_class("vit_qk") == "compute"


def test_fit_recovers_scales_and_overhead_exactly() -> None:
    problem = resnet_problem(paper_granularity=True, seed=3)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=1)
    assert configs[0] == Configuration({}, {})
    assert any(not k for c in configs for k in c.kept.values())  # some blocks removed
    truth = {"compute": 0.8, "memory": 0.55}
    measured = [_network_latency(problem, classes, c, truth, 0.004) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert fitted.scales["compute"] == pytest.approx(0.8, rel=1e-6)
    assert fitted.scales["memory"] == pytest.approx(0.55, rel=1e-6)
    assert fitted.overhead == pytest.approx(0.004, rel=1e-5)
    assert fitted.fit["median_error_after"] < 1e-9 < fitted.fit["median_error_before"]
    assert fitted.fit["median_error_held_out"] < 1e-9
    # the calibrated problem predicts every configuration the network ran
    calibrated = fitted.apply(problem, "calib.json")
    for c, m in zip(configs, measured):
        choice = {d.name: c.choice.get(d.name, d.full_index) for d in problem.dims}
        assert calibrated.latency(choice, c.kept) == pytest.approx(m, rel=1e-9)
    assert calibrated.provenance["calibration"]["file"] == "calib.json"
    assert problem.dense_latency != pytest.approx(calibrated.dense_latency)  # the input problem is untouched


def test_fit_recovers_a_negative_overhead_that_zeroes_the_smallest_entries() -> None:
    """ONNX Runtime's case: a session call costs more per node than the node inside the whole graph, and fused
    elementwise ops cost next to nothing there. Each kept term costs ``max(0, scale * entry + overhead)`` with
    an overhead below minus the smallest entry: the fit finds it (until 2026-12-05 it was bounded by the
    smallest entry and could not), and the calibrated tables stop at 0, never negative."""
    problem = resnet_problem(paper_granularity=True, seed=3)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=1)
    entries = np.concatenate([np.ravel(t.table) for t in problem.terms])
    overhead = -2.0 * float(np.percentile(entries, 20))  # every fifth entry and more would go negative
    assert overhead < -float(entries.min())
    truth = {"compute": 1.0, "memory": 0.3}

    def network(config):
        choice = {d.name: config.choice.get(d.name, d.full_index) for d in problem.dims}
        return problem.constant_latency + sum(
            max(0.0, truth[classes[t.name]] * float(t.table[tuple(choice[d] for d in t.dims)]) + overhead)
            for t in problem.terms if t.block is None or config.kept.get(t.block, True))

    measured = [network(c) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert fitted.scales["memory"] / fitted.scales["compute"] == pytest.approx(0.3, rel=1e-4)
    assert fitted.overhead / fitted.scales["compute"] == pytest.approx(overhead, rel=1e-4)
    assert fitted.fit["median_error_after"] < 1e-6 < 0.03 < fitted.fit["median_error_before"]
    assert fitted.fit["accepted"]
    calibrated = fitted.apply(problem)
    assert min(float(np.min(t.table)) for t in calibrated.terms) == 0.0  # clamped, not negative
    assert sum(int(np.sum(t.table == 0.0)) for t in calibrated.terms) > len(entries) // 10
    for c, m in zip(configs, measured):
        choice = {d.name: c.choice.get(d.name, d.full_index) for d in problem.dims}
        assert calibrated.latency(choice, c.kept) == pytest.approx(m, rel=1e-5)


def _with_weights(problem, seed=0):
    """The problem with a weight count per term and option: a conv's weights grow with the product of its
    dims' widths, as its table does, but not in proportion to it (the table carries a call's fixed cost)."""
    import dataclasses

    rng = np.random.default_rng(seed)
    terms = []
    for t in problem.terms:
        sizes = [np.asarray(next(d for d in problem.dims if d.name == name).options, float) for name in t.dims]
        count = np.ones(np.shape(t.table))
        for axis, size in enumerate(sizes):
            count = count * size.reshape([-1 if i == axis else 1 for i in range(len(sizes))])
        terms.append(dataclasses.replace(t, resources={"params": count * rng.uniform(50, 500)}))
    return dataclasses.replace(problem, terms=terms)


def test_fit_recovers_a_cost_per_weight() -> None:
    """A network whose weights are streamed from memory pays per weight what ops timed alone, their weights in
    cache, did not: measured = the calibrated terms + cost x weights kept. The fit finds the cost with the
    scales and the overhead; the calibrated problem carries it in every term's table; a problem without weight
    counts is refused, and a calibration file keeps it."""
    problem = _with_weights(resnet_problem(paper_granularity=True, seed=3))
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=1)
    truth = {"compute": 1.0, "memory": 0.6}
    dense_weights = problem.resource("params", problem.dense_choice())
    cost = 0.4 * problem.dense_latency / dense_weights  # the weights: 0.4 of the dense table on top

    def network(config):
        choice = {d.name: config.choice.get(d.name, d.full_index) for d in problem.dims}
        streamed = cost * problem.resource("params", choice, config.kept)
        return _network_latency(problem, classes, config, truth, 0.002) + streamed

    measured = [network(c) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert fitted.scales["memory"] / fitted.scales["compute"] == pytest.approx(0.6, rel=1e-3)
    assert fitted.overhead / fitted.scales["compute"] == pytest.approx(0.002, rel=1e-3)
    assert fitted.weight_cost / fitted.scales["compute"] == pytest.approx(cost, rel=1e-3)
    assert fitted.fit["weights_share"] == pytest.approx(cost * dense_weights / measured[0], rel=1e-3)
    assert fitted.fit["median_error_after"] < 1e-6 < 0.03 < fitted.fit["median_error_before"]
    calibrated = fitted.apply(problem)
    for c, m in zip(configs, measured):
        choice = {d.name: c.choice.get(d.name, d.full_index) for d in problem.dims}
        assert calibrated.latency(choice, c.kept) == pytest.approx(m, rel=1e-5)
    assert calibrated.provenance["calibration"]["weight_cost"] == fitted.weight_cost
    # without weight counts the same calibration cannot be applied: a cost per weight of nothing is no cost
    with pytest.raises(SchemaError, match="cost per weight.*no weight counts"):
        fitted.apply(resnet_problem(paper_granularity=True, seed=3))
    # and without weight counts the fit has no such term
    plain = resnet_problem(paper_granularity=True, seed=3)
    assert fit_calibration(plain, classes, configs, measured).weight_cost == 0.0


def test_fit_holds_a_scale_at_its_bound_and_says_so() -> None:
    problem = resnet_problem(paper_granularity=True, seed=4)
    classes = _classes(problem)
    configs = random_configurations(problem, 6, seed=2)
    measured = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 9.0}, 0.0) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert fitted.scales["memory"] / fitted.scales["compute"] == pytest.approx(4.0)
    assert fitted.fit["at_bound"] == ["memory"]
    assert fitted.fit["median_error_after"] < fitted.fit["median_error_before"]
    assert fitted.fit["accepted"]


def test_a_fit_that_does_not_predict_unseen_configurations_is_not_used() -> None:
    """Measurements the table already predicts, up to noise: fitting would only fit the noise."""
    problem = resnet_problem(paper_granularity=True, seed=8)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=6)
    rng = np.random.default_rng(0)
    measured = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 1.0}, 0.0)
                * (1 + 0.02 * rng.standard_normal()) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert not fitted.fit["accepted"]
    # the table's shape at the level the dense network measured: fractions of dense as the table has them
    level = measured[0] / problem.dense_latency
    assert fitted.scales == {"compute": pytest.approx(level), "memory": pytest.approx(level)} and fitted.overhead == 0.0
    calibrated = fitted.apply(problem)
    assert calibrated.dense_latency == pytest.approx(measured[0])
    for c in configs:
        choice = {d.name: c.choice.get(d.name, d.full_index) for d in problem.dims}
        assert calibrated.latency(choice, c.kept) / calibrated.dense_latency == \
            pytest.approx(problem.latency(choice, c.kept) / problem.dense_latency)


def test_a_fit_is_used_where_the_table_errs_only_at_high_pruning() -> None:
    """Memory ops cost 0.85x the table inside the network: 2.4 % median error over configurations spread from 90 %
    to 10 % of dense (under the noise floor), 5.3 % below 40 % of dense, where the fit predicts what it did not
    see exactly: the fit is used, and the report says on which subset; with the error nowhere, it is not."""
    problem = resnet_problem(paper_granularity=True, seed=3)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=0)
    measured = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 0.85}, 0.0) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    f = fitted.fit
    assert f["median_error_before"] == pytest.approx(0.024, abs=0.002) and f["median_error_before"] < NOISE_FLOOR
    fractions = [m / measured[0] for m in measured[1:]]
    high = [k for k, fr in enumerate(fractions) if fr < 0.4]
    assert f["high_pruning"]["configurations"] == len(high) == 5
    assert f["high_pruning"]["median_error_before"] == pytest.approx(
        sorted(abs(f["errors_before"][k]) for k in high)[2]) == pytest.approx(0.053, abs=0.002)
    assert f["high_pruning"]["median_error_held_out"] < 1e-6
    assert f["accepted"] and f["accepted_on"] == "high_pruning"
    assert fitted.scales["memory"] / fitted.scales["compute"] == pytest.approx(0.85, rel=1e-4)
    from mdp_cli.pipeline import calibration_summary

    line = calibration_summary(fitted)
    assert "used: fraction-of-dense error below 40% of dense (5 configurations) 5.3% -> 0.0%" in line, line
    # the same configurations as the table has them: nothing to correct anywhere
    exact = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 1.0}, 0.0) for c in configs]
    f = fit_calibration(problem, classes, configs, exact).fit
    assert not f["accepted"] and f["accepted_on"] is None and f["high_pruning"]["median_error_before"] < 1e-9


def test_configurations_spread_evenly_in_log_down_to_the_smallest_network() -> None:
    """The calibration aims its configurations at fractions of dense even in log, from 90 % down to the smallest
    network the space allows but not below 5 % (every scale counts alike in relative errors), and the table puts
    each there."""
    problem = resnet_problem(paper_granularity=True, seed=3)
    smallest = smallest_fraction(problem)
    everything_off = problem.latency({d.name: 0 for d in problem.dims},
                                     {b.name: False for b in problem.blocks if b.removable})
    assert smallest == pytest.approx(everything_off / problem.dense_latency) and 0.05 < smallest < 0.2
    targets = target_fractions(problem, 8)
    assert targets[0] == pytest.approx(0.9) and targets[-1] == pytest.approx(smallest)
    steps = [b / a for a, b in zip(targets, targets[1:])]
    assert steps == pytest.approx([(smallest / 0.9) ** (1 / 7)] * 7)
    configs = random_configurations(problem, 8, seed=0)
    fractions = [problem.latency({d.name: c.choice.get(d.name, d.full_index) for d in problem.dims}, c.kept)
                 / problem.dense_latency for c in configs[1:]]
    assert fractions == pytest.approx(targets, rel=0.05)
    assert sum(f < 0.4 for f in fractions) == 5
    # another seed draws other widths and blocks for the same targets
    other = random_configurations(problem, 8, seed=1)
    assert [c.choice for c in other[1:-1]] != [c.choice for c in configs[1:-1]]
    # a space whose smallest network is a sliver of dense (every block removable, as a ViT's): down to 5 % only
    import dataclasses

    sliver = dataclasses.replace(problem, constant_latency=0.0, terms=[t for t in problem.terms if t.block is not None])
    assert smallest_fraction(sliver) < 0.01
    assert target_fractions(sliver, 8)[-1] == pytest.approx(0.05)
    configs = random_configurations(sliver, 8, seed=0)
    last = sliver.latency({d.name: configs[-1].choice.get(d.name, d.full_index) for d in sliver.dims}, configs[-1].kept)
    assert last / sliver.dense_latency == pytest.approx(0.05, rel=0.1)


def test_configurations_reach_their_target_by_removing_blocks_where_widths_do_not() -> None:
    """A network whose cost does not fall with its widths (flat tables: every op a fixed cost, as MobileNetV2's thin
    layers nearly are) reaches the high-pruning regime only by removing blocks: each configuration loses blocks
    until the table puts it at its target fraction of dense, or none is left."""
    import dataclasses

    problem = resnet_problem(paper_granularity=True, seed=3)
    flat = dataclasses.replace(problem, terms=[dataclasses.replace(t, table=np.full(np.shape(t.table), 1.0))
                                               for t in problem.terms])
    removable = [b.name for b in flat.blocks if b.removable]
    configs = random_configurations(flat, 8, seed=0)
    removed = []
    for c, target in zip(configs[1:], target_fractions(flat, 8)):
        choice = {d.name: c.choice.get(d.name, d.full_index) for d in flat.dims}
        fraction = flat.latency(choice, c.kept) / flat.dense_latency
        removed.append(sum(not c.kept[name] for name in removable))
        assert fraction <= target * (1 + 1e-9) or removed[-1] == len(removable), (fraction, target)
    assert removed == sorted(removed) and removed[-1] == len(removable) > removed[0]


def test_a_class_without_terms_keeps_scale_one() -> None:
    problem = resnet_problem(paper_granularity=True, seed=5)
    classes = {t.name: "compute" for t in problem.terms}
    configs = random_configurations(problem, 5, seed=3)
    measured = [_network_latency(problem, classes, c, {"compute": 1.3, "memory": 1.0}, 0.5) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    assert fitted.fit["accepted"]
    assert fitted.scales == {"compute": pytest.approx(1.3, rel=1e-6), "memory": 1.0}


def test_save_read_and_refusals(tmp_path) -> None:
    problem = resnet_problem(paper_granularity=True, seed=6)
    classes = _classes(problem)
    configs = random_configurations(problem, 4, seed=4)
    measured = [_network_latency(problem, classes, c, {"compute": 0.9, "memory": 0.7}, 0.001) for c in configs]
    fitted = fit_calibration(problem, classes, configs, measured)
    path = tmp_path / "calibration.json"
    fitted.save(path, model="synthetic")
    back = read_calibration(path)
    assert back.scales == pytest.approx(fitted.scales) and back.overhead == pytest.approx(fitted.overhead)
    assert back.weight_cost == fitted.weight_cost == 0.0
    data = json.loads(path.read_text())
    assert data["version"] == 2
    # a version-1 file (before the cost per weight) reads as none; a version-2 file must say it
    v1 = {**{k: v for k, v in data.items() if k != "weight_cost"}, "version": 1}
    path.write_text(json.dumps(v1))
    assert read_calibration(path).weight_cost == 0.0
    path.write_text(json.dumps({**v1, "version": 2}))
    with pytest.raises(SchemaError, match="weight_cost.*re-run 'mdp calibrate'"):
        read_calibration(path)
    path.write_text(json.dumps({**data, "weight_cost": -1e-9}))
    with pytest.raises(SchemaError, match="weight_cost.*>= 0"):
        read_calibration(path)
    data["scales"]["memory"] = -0.5
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=r"scales\.memory.*re-run 'mdp calibrate'"):
        read_calibration(path)
    other = resnet_problem(paper_granularity=True, seed=6, depths=(2, 2, 2, 2))
    renamed = type(fitted)(fitted.scales, fitted.overhead, {"x": "compute"}, fitted.fit)
    with pytest.raises(SchemaError, match="no class for term"):
        renamed.apply(other)


def test_fit_needs_dense_and_positive_measurements() -> None:
    problem = resnet_problem(paper_granularity=True, seed=7)
    classes = _classes(problem)
    configs = random_configurations(problem, 3, seed=5)
    with pytest.raises(ValueError, match="positive"):
        fit_calibration(problem, classes, configs, [1.0, 0.5, float("nan"), 0.2])
    with pytest.raises(ValueError, match="at least two"):
        fit_calibration(problem, classes, configs[:2], [1.0, 0.5])
    assert np.isfinite(problem.dense_latency)


def test_halves_split_the_rounds_in_time_order() -> None:
    medians, (first, second) = halves_of([[1.0, 2.0, 3.0, 10.0, 11.0, 12.0], [5.0, 4.0, 6.0, 5.0, 7.0, 3.0]])
    assert medians == [6.5, 5.0]
    assert first == [2.0, 5.0] and second == [11.0, 5.0]
    # fractions of dense 0.8 and 0.88 in the two halves: 10 % apart
    assert measurement_disagreement(([10.0, 8.0], [10.0, 8.8])) == pytest.approx(0.1)
    assert measurement_disagreement(([10.0, 8.8], [10.0, 8.0])) == pytest.approx(0.1)


def test_latencies_in_turns_scale_each_ratio_to_the_dense_level() -> None:
    """Each configuration timed in turns with dense: its latency is its ratio to the dense samples of its own
    turns times the dense median over all turns; the halves the same from each half of the samples."""
    pairs = [([5.0, 5.0, 6.0, 6.0], [10.0, 10.0, 12.0, 12.0]),   # 0.5 of dense in both halves, the machine slowed
             ([3.0, 3.0, 3.0, 3.0], [10.0, 10.0, 10.0, 10.0])]   # 0.3 of dense throughout
    measured, (first, second) = latencies_in_turns(pairs)
    dense = 10.0  # the median of all eight dense samples
    assert measured == pytest.approx([dense, 0.5 * dense, 0.3 * dense])
    assert first == pytest.approx([10.0, 5.0, 3.0]) and second == pytest.approx([11.0, 5.5, 3.3])
    # a disturbance in the second half of one configuration shows in the halves' disagreement
    measured, halves = latencies_in_turns([([5.0, 5.0, 9.0, 9.0], [10.0] * 4), ([3.0] * 4, [10.0] * 4)])
    assert halves[0][1] == pytest.approx(5.0) and halves[1][1] == pytest.approx(9.0)
    assert measurement_disagreement(halves) == pytest.approx(0.4)  # median of 0.8 and 0.0
    with pytest.raises(ValueError, match="samples"):
        latencies_in_turns([([1.0], [])])


def test_a_measurement_noisier_than_the_tables_error_keeps_the_plain_table() -> None:
    """The same biased table (a per-term overhead the table misses: plain errors well over 4 %) is corrected when
    the calibration's own measurement is steady, and left alone when the two halves of its rounds disagree by
    more than the table errs, overall and below 40 % of dense: that error cannot be told from the noise."""
    problem = resnet_problem(paper_granularity=True, seed=3)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=1)
    measured = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 1.0}, 0.15) for c in configs]
    steady = fit_calibration(problem, classes, configs, measured, (measured, measured))
    plain_error = steady.fit["median_error_before"]
    assert plain_error > NOISE_FLOOR
    assert steady.fit["measurement_disagreement"] == 0.0 and steady.fit["noise_floor"] == NOISE_FLOOR
    assert steady.fit["accepted"] and steady.overhead > 0
    # second half: every pruned network 1.5 times the plain error (overall, or below 40 % of dense where that is
    # larger) slower relative to dense, alternately faster
    wobble = 1.5 * max(plain_error, steady.fit["high_pruning"]["median_error_before"])
    second = [measured[0]] + [m * (1 + wobble if k % 2 else 1 / (1 + wobble)) for k, m in enumerate(measured[1:])]
    noisy = fit_calibration(problem, classes, configs, measured, (measured, second))
    assert noisy.fit["measurement_disagreement"] == pytest.approx(wobble)
    assert noisy.fit["noise_floor"] == pytest.approx(wobble)
    assert not noisy.fit["accepted"]
    assert noisy.fit["median_error_before"] == pytest.approx(plain_error)
    with pytest.raises(ValueError, match="halves"):
        fit_calibration(problem, classes, configs, measured, (measured, measured[:-1]))


def test_the_summary_line_says_when_the_machine_was_too_noisy_to_tell() -> None:
    from mdp_cli.pipeline import calibration_summary

    problem = resnet_problem(paper_granularity=True, seed=3)
    classes = _classes(problem)
    configs = random_configurations(problem, 8, seed=1)
    measured = [_network_latency(problem, classes, c, {"compute": 1.0, "memory": 1.0}, 0.15) for c in configs]
    steady = calibration_summary(fit_calibration(problem, classes, configs, measured, (measured, measured)))
    assert "; used: fraction-of-dense error" in steady and "warning" not in steady
    second = [measured[0]] + [m * 1.3 for m in measured[1:]]
    noisy = calibration_summary(fit_calibration(problem, classes, configs, measured, (measured, second)))
    assert "not used" in noisy and "the measurement's halves 30.0% apart" in noisy
    assert "warning: this machine's timings moved 30.0%" in noisy
