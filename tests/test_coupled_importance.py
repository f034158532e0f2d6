"""score.coupled: a dim shared by several layers combines their scores by sum, mean or sum / sqrt(count)
(importance/coupled.py), for the CNN scorer (residual widths) and the ViT scorer (the embedding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnn_helpers import UserResNet, randomize_bn
from mdp_cli.errors import MdpError
from mdp_cli.importance.coupled import aggregate, coupled_of, coupled_weight
from mdp_cli.importance.taylor import bn_taylor_scores, importance_record, scoring_batches
from mdp_cli.space.cnn import analyze_cnn

MODES = ("sum", "mean", "sqrt")


@pytest.fixture(scope="module")
def scored():
    """Per-norm Taylor scores of a tiny residual CNN whose stem is prunable: the stem's width is then the
    dim of stage 1's residual (3 norms: the stem's BN and both blocks' bn2), stage 2's residual has 3 norms
    (both blocks' bn2 and the shortcut's BN), every block-inner width one."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16), max_options=4, prune_stem=True)
    scores, _ = bn_taylor_scores(model, analysis, scoring_batches("synthetic", 16, 4, 2, num_classes=10))
    return analysis, scores


def dim_with(analysis, node: str) -> str:
    return next(d.name for d in analysis.space.dims if node in d.coupled)


@pytest.mark.parametrize("mode", MODES)
def test_residual_dims_combine_their_norms_scores_as_the_mode_says(scored, mode):
    analysis, scores = scored
    record = importance_record(analysis, scores, coupled=mode)
    for node, norms in (("stage2.0.short.0", ["stage2_0_bn2", "stage2_1_bn2", "stage2_0_short_1"]),
                        ("stem.0", ["stem_1", "stage1_0_bn2", "stage1_1_bn2"])):
        rec = record[dim_with(analysis, node)]
        per_layer = np.stack([scores[n] for n in norms])  # one row of channel scores per norm
        hand = {"sum": per_layer.sum(0), "mean": per_layer.mean(0),
                "sqrt": per_layer.sum(0) / math.sqrt(3)}[mode]
        assert rec["layers"] == 3
        np.testing.assert_allclose(rec["scores"], hand, rtol=1e-12)
        # cumulative: the top channels of the combined scores; base + gated still add up to it
        for k, option in enumerate(rec["options"]):
            assert rec["cumulative"][k] == pytest.approx(np.sort(hand)[::-1][:option].sum(), rel=1e-12)
        parts = np.asarray(rec["base"]) + sum(np.asarray(v) for v in rec["gated"].values())
        np.testing.assert_allclose(parts, rec["cumulative"], rtol=1e-12)
    # a removed block takes its own norm's share, scaled like the rest
    stage2 = record[dim_with(analysis, "stage2.0.short.0")]
    w = {"sum": 1.0, "mean": 1 / 3, "sqrt": 1 / math.sqrt(3)}[mode]
    assert stage2["gated"]["stage2.1"][-1] == pytest.approx(scores["stage2_1_bn2"].sum() * w, rel=1e-12)
    # a width of one norm is the same in every mode
    inner = record["stage1.0.conv1"]
    assert inner["layers"] == 1
    np.testing.assert_allclose(inner["scores"], scores["stage1_0_bn1"], rtol=1e-12)


def test_the_mode_changes_weights_not_which_channels_are_kept(scored):
    analysis, scores = scored
    records = {mode: importance_record(analysis, scores, coupled=mode) for mode in MODES}
    for name in records["sum"]:
        assert records["mean"][name]["order"] == records["sum"][name]["order"]
        assert records["sqrt"][name]["order"] == records["sum"][name]["order"]
    # relative to a block-inner width, the residual width weighs 3x less under mean, sqrt(3)x less under sqrt
    hub, inner = dim_with(analysis, "stage2.0.short.0"), "stage2.1.conv1"

    def ratio(mode):
        return records[mode][hub]["cumulative"][-1] / records[mode][inner]["cumulative"][-1]

    assert ratio("mean") == pytest.approx(ratio("sum") / 3, rel=1e-12)
    assert ratio("sqrt") == pytest.approx(ratio("sum") / math.sqrt(3), rel=1e-12)


def test_weights_and_refusals():
    assert [coupled_weight(m, 4) for m in MODES] == [1.0, 0.25, 0.5]
    assert coupled_weight("mean", 0) == 1.0  # a dim nothing scored stays zeros
    with pytest.raises(MdpError, match=r"score.coupled \(--coupled\) = 'median' is not allowed; expected one of sum"):
        coupled_weight("median", 2)
    rec = aggregate({"scores": [4.0, 2.0], "cumulative": [4.0, 6.0], "base": [0.0, 0.0],
                     "gated": {"b0": [4.0, 6.0]}}, 4, "sqrt")
    assert rec == {"scores": [2.0, 1.0], "cumulative": [2.0, 3.0], "base": [0.0, 0.0], "gated": {"b0": [2.0, 3.0]},
                   "layers": 4}
    assert coupled_of({"provenance": {}}) == "sum" and coupled_of(None) is None  # files from before the setting


def test_vit_embedding_combines_its_2_depth_plus_1_shares():
    from mdp_cli.importance.vit import vit_importance
    from mdp_cli.models import create_model
    from mdp_cli.space.vit import build_vit_space

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("deit_tiny", img_size=32, num_classes=5, depth=2)
    space = build_vit_space(model, "deit_tiny")
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 5, (2,), generator=g))]
    records = {mode: vit_importance(model, data, space, coupled=mode) for mode in MODES}
    total = np.asarray(records["sum"]["dims"]["embed"]["scores"])
    for mode, w in (("sum", 1.0), ("mean", 1 / 5), ("sqrt", 1 / math.sqrt(5))):
        emb = records[mode]["dims"]["embed"]
        assert emb["layers"] == 2 * 2 + 1 and records[mode]["provenance"]["coupled"] == mode
        np.testing.assert_allclose(emb["scores"], total * w, rtol=1e-12)
        np.testing.assert_allclose(emb["gated"]["blocks.1.mlp"],
                                   np.asarray(records["sum"]["dims"]["embed"]["gated"]["blocks.1.mlp"]) * w, rtol=1e-12)
        assert emb["order"] == records["sum"]["dims"]["embed"]["order"]
        heads = records[mode]["dims"]["blocks.0.attn.heads"]
        assert heads["layers"] == 1 and heads["scores"] == records["sum"]["dims"]["blocks.0.attn.heads"]["scores"]
