"""score.normalize: every dim's scores scaled to one total (sum) or one mean per unit (mean) before the
solver weighs dims against each other (importance/normalize.py); which units a dim keeps never changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnn_helpers import UserResNet, randomize_bn
from mdp_cli.errors import MdpError
from mdp_cli.importance.normalize import normalize_dims
from mdp_cli.importance.taylor import bn_taylor_scores, importance_record, scoring_batches
from mdp_cli.space.cnn import analyze_cnn


@pytest.fixture(scope="module")
def record():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16), max_options=4, prune_stem=True)
    scores, _ = bn_taylor_scores(model, analysis, scoring_batches("synthetic", 16, 4, 2, num_classes=10))
    return importance_record(analysis, scores)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_every_dim_is_scaled_to_one_total_or_one_mean(record, mode):
    normalized = normalize_dims(record, mode)
    totals = {name: sum(rec["scores"]) for name, rec in record.items()}
    assert len(set(round(t, 6) for t in totals.values())) > 1  # the raw totals differ: something to normalise
    for name, rec in normalized.items():
        raw = record[name]
        expected_total = 1.0 if mode == "sum" else len(raw["scores"])
        assert sum(rec["scores"]) == pytest.approx(expected_total, rel=1e-12)
        factor = expected_total / totals[name]
        assert rec["order"] == raw["order"] and rec["options"] == raw["options"]
        np.testing.assert_allclose(rec["cumulative"], np.asarray(raw["cumulative"]) * factor, rtol=1e-12)
        np.testing.assert_allclose(rec["base"], np.asarray(raw["base"]) * factor, rtol=1e-12)
        for blk, values in raw["gated"].items():  # a removed block's share, scaled like the rest
            np.testing.assert_allclose(rec["gated"][blk], np.asarray(values) * factor, rtol=1e-12)
        if rec["options"][-1] == len(rec["scores"]):  # the full width keeps the whole total
            assert rec["cumulative"][-1] == pytest.approx(expected_total, rel=1e-12)


def test_none_zero_dims_and_refusals(record):
    assert normalize_dims(record, "none") == record
    zero = {"d": {"scores": [0.0, 0.0], "cumulative": [0.0, 0.0], "base": [0.0, 0.0], "gated": {}, "order": [0, 1],
                  "options": [1, 2]}}
    assert normalize_dims(zero, "sum") == zero  # nothing scored: nothing to scale
    with pytest.raises(MdpError, match=r"score.normalize \(--normalize\) = 'max' is not allowed; expected one of "
                                       r"none, sum, mean"):
        normalize_dims(record, "max")


def test_the_solver_no_longer_cuts_a_narrow_layer_for_its_small_scores():
    """Two dims against one budget, solved exactly: a wide dim with large scores and a narrow one (an early,
    high-resolution layer: few channels, each costing 3x the latency of a wide one) with small scores.
    On raw scores the solver gives the narrow layer up to one channel; normalised by total, a channel of
    the narrow layer is worth 4x one of the wide layer, and it keeps the narrow layer whole."""
    import numpy as np

    from mdp_cli.solve import solve_problem
    from mdp_cli.solve.problem import Dim, ImportanceEntry, Term, make_problem

    dims = {"wide": {"scores": [10.0] * 16, "order": list(range(16)), "options": [4, 8, 12, 16],
                     "cumulative": [40.0, 80.0, 120.0, 160.0], "base": [40.0, 80.0, 120.0, 160.0], "gated": {}},
            "narrow": {"scores": [0.5] * 4, "order": list(range(4)), "options": [1, 2, 3, 4],
                       "cumulative": [0.5, 1.0, 1.5, 2.0], "base": [0.5, 1.0, 1.5, 2.0], "gated": {}}}

    def solve(records):
        problem = make_problem(
            [Dim(name, tuple(rec["options"]), rec["options"][0]) for name, rec in records.items()],
            [ImportanceEntry(name, np.asarray(rec["cumulative"]), None) for name, rec in records.items()],
            [Term("wide_conv", ("wide",), np.asarray([4.0, 8.0, 12.0, 16.0]), None),
             Term("narrow_conv", ("narrow",), np.asarray([3.0, 6.0, 9.0, 12.0]), None)],
            [], constant_latency=0.0, name="narrow-vs-wide")
        return solve_problem(problem, budget=16.0 / 28.0).choice

    assert solve(dims) == {"wide": 12, "narrow": 1}
    assert solve(normalize_dims(dims, "sum")) == {"wide": 4, "narrow": 4}
