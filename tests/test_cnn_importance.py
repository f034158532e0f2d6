"""Taylor BN importance: coupled sums, per-block parts, cumulative vectors, NaN refusal, ImageFolder data."""

import json

import numpy as np
import pytest
import torch

from cnn_helpers import UserResNet, randomize_bn
from mdp_cli.errors import SchemaError
from mdp_cli.importance.taylor import (bn_taylor_scores, importance_record, read_importance, scoring_batches,
                                       write_importance)
from mdp_cli.space.cnn import analyze_cnn


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)
    model = randomize_bn(UserResNet())
    analysis = analyze_cnn(model, "user", (3, 16, 16), max_options=4)
    scores, count = bn_taylor_scores(model, analysis, scoring_batches("synthetic", 16, 4, 2, num_classes=10))
    return model, analysis, scores, importance_record(analysis, scores)


def test_bn_scores_are_taylor_of_gamma_and_beta(scored):
    model, analysis, scores, _ = scored
    bn = model.stage1[0].bn1
    batches = list(scoring_batches("synthetic", 16, 4, 2, num_classes=10))
    want = 0
    for x, y in batches:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        want = want + (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).abs().detach().double()
    np.testing.assert_allclose(scores["stage1_0_bn1"], want.numpy(), rtol=1e-6)


def test_coupled_dims_sum_and_gate_by_block(scored):
    _, analysis, scores, record = scored
    name = next(d.name for d in analysis.space.dims if "stage2.0.short.0" in d.coupled)
    rec = record[name]
    total = scores["stage2_0_bn2"] + scores["stage2_1_bn2"] + scores["stage2_0_short_1"]
    np.testing.assert_allclose(rec["scores"], total, rtol=1e-9)
    assert set(rec["gated"]) == {"stage2.0", "stage2.1"}
    summed = np.asarray(rec["base"]) + sum(np.asarray(v) for v in rec["gated"].values())
    np.testing.assert_allclose(summed, rec["cumulative"], rtol=1e-9)
    assert rec["cumulative"][-1] == pytest.approx(total.sum())
    # top-k: the first option keeps the largest channels
    k = rec["options"][0]
    assert rec["cumulative"][0] == pytest.approx(np.sort(total)[::-1][:k].sum())
    assert sorted(rec["order"]) == list(range(len(total)))
    inner = record["stage1.0.conv1"]
    assert inner["block"] == "stage1.0" and inner["gated"] == {}


def test_cumulative_is_non_decreasing(scored):
    for rec in scored[3].values():
        assert all(b >= a for a, b in zip(rec["cumulative"], rec["cumulative"][1:]))
        assert len(rec["cumulative"]) == len(rec["options"])


def test_nan_refused_on_write_and_read(scored, tmp_path):
    record = json.loads(json.dumps(scored[3]))
    name = next(iter(record))
    record[name]["scores"][0] = float("nan")
    with pytest.raises(SchemaError, match="imp.json") as info:
        write_importance(tmp_path / "imp.json", "user", record)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "imp.json").exists()
    write_importance(tmp_path / "ok.json", "user", scored[3])
    text = (tmp_path / "ok.json").read_text().replace(str(scored[3][name]["scores"][0]), "NaN", 1)
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(SchemaError, match="bad.json"):
        read_importance(tmp_path / "bad.json")


def test_imagefolder_data(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    batches = list(scoring_batches(str(tmp_path), 16, 4, 5))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 16, 16)
    from mdp_cli.errors import MdpError

    with pytest.raises(MdpError, match="not a directory"):
        list(scoring_batches(str(tmp_path / "missing"), 16, 4, 1))
