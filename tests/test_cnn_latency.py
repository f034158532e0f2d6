"""LUT storage, reuse, interpolation, device checks, and predicted vs measured latency of exported models."""

import random
import statistics

import numpy as np
import pandas as pd
import pytest

from cnn_helpers import random_solution
from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.export.cnn_prune import prune_cnn
from mdp_cli.latency.lut import Lut, fill_by_interpolation, term_table
import mdp_cli.latency.cnn_ops  # noqa: F401  (registers the CNN latency ops)
from mdp_cli.latency.profile import configurations, profile_space
from mdp_cli.latency.timing import measure_in_turns, threads, time_round_robin
from mdp_cli.space.cnn import discover_space
from mdp_cli.latency.to_problem import build_problem, predicted_latency

QUICK = dict(warmup=2, repeats=5, progress=False)


@pytest.fixture(scope="module")
def small_resnet(tmp_path_factory):
    model, analysis = discover_space("resnet18", 32, max_options=3, multiple=8)
    lut_dir = tmp_path_factory.mktemp("luts")
    summary = profile_space(analysis.space, lut_dir=lut_dir, warmup=10, repeats=30, progress=False)
    return model, analysis, summary


def _open(summary):
    return Lut.open(summary["lut"], summary["device"], summary["dtype"], summary["batch"], summary["threads"])


def test_lut_rows_and_sidecar(small_resnet):
    _, analysis, summary = small_resnet
    frame = pd.read_csv(summary["lut"], keep_default_na=False)
    for column in ("op", "signature", "sizes", "device", "dtype", "batch", "threads", "median_ms", "spread_ms",
                   "repeats", "created"):
        assert column in frame.columns
    assert len(frame) == summary["configurations"] == len(configurations(analysis.space))
    assert (frame["median_ms"] > 0).all()
    assert set(frame["sizes"]) >= {""}  # fixed parts (stem) have no sizes
    from mdp_cli.latency.lut import read_sidecar

    side = read_sidecar(summary["lut"])
    assert side["provenance"]["device"] == summary["device"] and side["provenance"]["threads"] == 1


def test_rows_are_reused_across_runs_and_models(small_resnet, tmp_path):
    _, analysis, summary = small_resnet
    again = profile_space(analysis.space, lut_path=summary["lut"], **QUICK)
    assert again["measured"] == 0 and again["reused"] == summary["configurations"]
    # resnet34 shares the stem and many convs with resnet18 at the same resolution and options
    _, a34 = discover_space("resnet34", 32, max_options=3, multiple=8)
    shared = {c[1] + c[2][0] if c[2] else c[1] for c in configurations(a34.space)}
    need = configurations(a34.space)
    lut = _open(summary)
    from mdp_cli.latency.lut import sizes_key

    have = sum((c[1], sizes_key(c[2], [c[4][r] for r in c[2]])) in lut for c in need)
    assert have > 0.5 * len(need) and shared


def test_lut_for_other_device_is_refused(small_resnet):
    _, _, summary = small_resnet
    with pytest.raises(SchemaError, match="device=") as info:
        Lut.open(summary["lut"], "Some Other GPU", summary["dtype"], 1, 1)
    assert "\n" not in str(info.value)
    with pytest.raises(SchemaError, match="batch="):
        Lut.open(summary["lut"], summary["device"], summary["dtype"], 8, 1)
    with pytest.raises(SchemaError, match="dtype="):
        Lut.open(summary["lut"], summary["device"], "float16", 1, 1)


def test_nan_in_lut_is_refused(small_resnet, tmp_path):
    _, _, summary = small_resnet
    frame = pd.read_csv(summary["lut"], keep_default_na=False)
    frame.loc[0, "median_ms"] = float("nan")
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(SchemaError, match="bad.csv"):
        Lut.open(bad, summary["device"], summary["dtype"], 1, 1)


def test_interpolation_is_exact_for_bilinear_tables():
    a, c = np.array([8, 16, 24, 32, 40]), np.array([4, 8, 12])
    truth = 0.5 + 0.01 * a[:, None] * c[None, :] + 0.2 * a[:, None]
    table = np.full_like(truth, np.nan)
    for i in (0, 2, 4):
        for j in (0, 2):
            table[i, j] = truth[i, j]
    np.testing.assert_allclose(fill_by_interpolation(table, [a, c]), truth, rtol=1e-12)


def test_grid_profiling_interpolates(tmp_path):
    _, analysis = discover_space("resnet18", 32, max_options=5, multiple=8)
    summary = profile_space(analysis.space, lut_dir=tmp_path, grid=2, **QUICK)
    full = len(configurations(analysis.space))
    assert summary["measured"] < full
    lut = _open(summary)
    problem = build_problem(analysis.space, lut, None)
    assert np.isfinite(problem.dense_latency)
    term = next(t for t in analysis.space.terms if len(t.dims) == 2)
    options = [analysis.space.dim(d).options for d in term.dims]
    with pytest.raises(MdpError, match="not measured"):
        term_table(lut, term.signature(), term.roles, options, interpolate=False)


def test_prediction_matches_measured_exported_latency(small_resnet):
    """Sum of the LUT's terms vs the exported model's measured latency on this CPU (1 thread, thread clock).

    Tolerances, and why: the machine is shared and other jobs run at the same time; the very same network
    measured minutes apart moves by about +-6 % (cache and memory-bandwidth interference that the thread
    CPU clock cannot remove). So (a) the dense prediction must be within 30 % of the measurement, and (b)
    for 6 random solutions the predicted fraction of dense vs the measured fraction (pruned and dense
    timed in turns as the export's budget check times them, which cancels the load drift of the measuring
    side) must agree to a median of 12 %
    and a worst case of 35 % (tiny configurations, < 2 ms, carry fixed per-op overheads). The bench
    (scripts/bench_latency_model.py, resnet50 @ 64 px, 32 configurations) measured a median of 3.7 %.
    """
    model, analysis, summary = small_resnet
    problem = build_problem(analysis.space, _open(summary), None)
    import torch

    rng = random.Random(11)
    x = torch.randn(1, 3, 32, 32)
    dense_net, _ = prune_cnn(model, analysis, {}, {})
    errors = []
    with threads(1):
        (dense_ms, _, _), = time_round_robin([(dense_net, x)], warmup=10, repeats=30)
        assert abs(problem.dense_latency - dense_ms) / dense_ms <= 0.30, (problem.dense_latency, dense_ms)
        for _ in range(6):
            choice, kept = random_solution(analysis, rng, keep_prob=0.8)
            net, _ = prune_cnn(model, analysis, choice, kept)
            measured, dense_now = measure_in_turns(net, x, dense_net, x, warmup=10, samples=30)
            predicted = predicted_latency(problem, choice, kept) / problem.dense_latency
            errors.append(abs(predicted / (measured / dense_now) - 1))
    assert statistics.median(errors) <= 0.12, errors
    assert max(errors) <= 0.35, errors


@pytest.mark.slow
def test_resnet50_prediction_at_scale(tmp_path):
    """resnet50 @ 64 px, 10 random solutions: relative-to-dense error of the model the product ships (the table,
    in-network calibrated where the calibration says so, as ``mdp run`` does) vs the linear model.

    Why these bounds: on a quiet machine the bench (scripts/bench_latency_model.py, same model and size) has a
    median of 2-4 %; on one CI machine the plain table over-predicted every heavily pruned network (+10-14 % at
    0.2-0.35 of dense: ops timed alone pay a call the network amortises, docs/latency.md) and erred 9.3 % median
    where the linear model happened to err 6.4 %. That bias is what the calibration exists for, so the check is
    on the calibrated path: within 10 % (what a shared 2-core machine's noise and call costs allow; a broken
    table errs 20 % and more), or clearly better than the linear model (each term frozen at full size in its
    other dims), with an absolute bound for gross failures. Here (quiet) it measured 2.2 % vs linear 22 %."""
    import torch

    from mdp_cli.config import CalibrateSection
    from mdp_cli.latency.calibration import fit_calibration, random_configurations, term_class
    from mdp_cli.latency.calibration_timing import time_in_two_passes
    from mdp_cli.latency.timing import sample_calls_in_turns, summarize
    from mdp_cli.latency.runtimes import runner

    model, analysis = discover_space("resnet50", 64, max_options=6, multiple=8)
    summary = profile_space(analysis.space, lut_dir=tmp_path, warmup=10, repeats=30, progress=False)
    plain = build_problem(analysis.space, _open(summary), None)
    from mdp_cli.solve.linear import linearize
    from mdp_cli.latency.to_problem import choice_indices

    x = torch.randn(1, 3, 64, 64)
    dense_net, _ = prune_cnn(model, analysis, {}, {})
    # the calibrate stage's fit (pipeline.stage_calibrate), on its own configurations (not the ones checked below)
    configs = random_configurations(plain, CalibrateSection().configs, seed=0)
    calls = []
    for config in configs:
        sizes = {d.name: d.options[config.choice[d.name]] for d in plain.dims if d.name in config.choice}
        net, _ = prune_cnn(model, analysis, sizes, dict(config.kept))
        calls.append(runner(net, x, "eager", "cpu", "float32", 1))
    with threads(1):  # as stage_calibrate does: the rule's noise floor sees the two passes
        measured, halves = time_in_two_passes(calls, 10, 30, "cpu")
    classes = {t.name: term_class(t.op) for t in analysis.space.terms}
    calibration = fit_calibration(plain, classes, configs, measured, halves)
    problem = calibration.apply(plain, "test")
    linear = linearize(plain)
    rng = random.Random(2)
    signed, plain_signed, linear_signed, fractions = [], [], [], []
    with threads(1):
        for _ in range(10):
            choice, kept = random_solution(analysis, rng, keep_prob=0.7)
            net, _ = prune_cnn(model, analysis, choice, kept)
            # measured as the export's budget check does (in turns with dense)
            (measured, _, _), (dense_now, _, _) = (summarize(t) for t in sample_calls_in_turns(
                lambda: net(x), lambda: dense_net(x), 10, 30, "cpu"))
            idx = choice_indices(plain, choice)
            fraction = measured / dense_now
            fractions.append(round(fraction, 3))
            signed.append(problem.latency(idx, kept) / problem.dense_latency / fraction - 1)
            plain_signed.append(plain.latency(idx, kept) / plain.dense_latency / fraction - 1)
            linear_signed.append(linear.latency(idx, kept) / plain.dense_latency / fraction - 1)
    errors, linear_errors = [abs(e) for e in signed], [abs(e) for e in linear_signed]
    detail = {"signed": [round(e, 3) for e in signed], "plain_signed": [round(e, 3) for e in plain_signed],
              "linear_signed": [round(e, 3) for e in linear_signed], "measured_fraction": fractions,
              "calibration_used": calibration.fit["accepted"]}
    median = statistics.median(errors)
    assert median <= 0.10 or median <= 0.6 * statistics.median(linear_errors), detail
    assert median <= 0.30, detail
