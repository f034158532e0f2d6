"""Seed-level statistics of the accuracy benchmarks (scripts/bench_common.py) against hand-computed values, and
the in-memory finetune they use (mdp_cli.train.engine.finetune_module) against ``finetune`` itself."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_common as bc  # noqa: E402


def test_sign_flip_p_exact_enumeration() -> None:
    # all five differences positive: only the all-plus and all-minus patterns reach |sum| = 15 -> 2 / 32
    assert bc.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # {1, -1, 2, 3}: |sum| >= 5 needs the flipped subset of {1, 1, 2, 3} to sum to <= 1 ({}, {1}, {1'}) or
    # >= 6 ({1,2,3}, {1',2,3}, all): 6 of 16 patterns
    assert bc.sign_flip_p([1, -1, 2, 3]) == pytest.approx(6 / 16)
    # zero differences: every pattern ties the observed 0
    assert bc.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    # symmetric in sign
    assert bc.sign_flip_p([-1, -2, -3, -4, -5]) == bc.sign_flip_p([1, 2, 3, 4, 5])


def test_paired_t_and_p_against_closed_forms() -> None:
    # diffs 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5): t = 3 sqrt(2)
    t = bc.paired_t([1, 2, 3, 4, 5])
    assert t == pytest.approx(3 * math.sqrt(2), rel=1e-12)
    if bc.t_two_sided_p(t, 4) is not None:
        # Student t with 4 degrees of freedom: F(t) = 1/2 + 3/8 * u * (1 - u^2 / 12) with u = t / sqrt(1 + t^2/4)
        x = t * t / 4
        cdf = 0.5 + 3 / 8 * (t / math.sqrt(1 + x)) * (1 - x / (3 * (1 + x)))
        assert bc.t_two_sided_p(t, 4) == pytest.approx(2 * (1 - cdf), rel=1e-9)
        assert bc.t_two_sided_p(t, 4) == pytest.approx(0.01324, abs=1e-5)
    assert math.isnan(bc.paired_t([0.5, 0.5])) is False and bc.paired_t([0.5, 0.5]) == math.inf
    assert math.isnan(bc.paired_t([0.0, 0.0]))


def test_paired_stats_and_verdict() -> None:
    stats = bc.paired_stats([80.0, 81.0, 82.0], [79.0, 79.0, 79.0])  # diffs 1, 2, 3
    assert stats["n"] == 3 and stats["mean_diff"] == pytest.approx(2.0) and stats["sd_diff"] == pytest.approx(1.0)
    assert stats["mean_a"] == pytest.approx(81.0) and stats["sd_a"] == pytest.approx(1.0) and stats["sd_b"] == 0.0
    assert stats["t"] == pytest.approx(2 * math.sqrt(3))
    assert stats["p_sign_flip"] == pytest.approx(2 / 8)
    if stats["p_t"] is not None:  # df 2: p = 1 - t / sqrt(2 + t^2)
        assert stats["p_t"] == pytest.approx(1 - stats["t"] / math.sqrt(2 + stats["t"] ** 2), rel=1e-9)
    assert (stats["a_wins"], stats["b_wins"]) == (3, 0)
    assert bc.verdict(stats) == "tie"  # 3 seeds cannot reach p <= 0.05 with a sign-flip test
    five = bc.paired_stats([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
    assert five["p_sign_flip"] == pytest.approx(2 / 64) and bc.verdict(five) == "win"
    assert bc.verdict(bc.paired_stats([0] * 6, [1, 2, 3, 4, 5, 6])) == "loss"
    with pytest.raises(ValueError):
        bc.paired_stats([1.0], [1.0, 2.0])


def test_markdown_table_and_json_without_nan(tmp_path) -> None:
    table = bc.markdown_table([{"a": 1.23456, "p_t": 0.01234, "s": "x", "n": None}],
                              [("a", "A"), ("p_t", "p"), ("s", "S"), ("n", "N")])
    assert table.splitlines() == ["| A | p | S | N |", "|---|---|---|---|", "| 1.23 | 0.012 | x | – |"]
    bc.write_json(tmp_path / "r.json", {"t": float("nan"), "v": [1.0, float("inf")]})
    import json

    assert json.loads((tmp_path / "r.json").read_text()) == {"t": None, "v": [1.0, None]}


def test_finetune_module_is_finetune_in_memory(tmp_path) -> None:
    """Same recipe, seed and model: the in-memory loop and ``mdp finetune``'s give the same numbers."""
    import torch

    from mdp_cli.data import data_config
    from mdp_cli.train.engine import FinetuneConfig, evaluate_module, finetune, finetune_module, load_model

    data = "builtin:digits?train=64&val=32"
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=0.05, img_size=16, num_classes=10, augment=False, seed=3)
    torch.set_num_threads(1)
    row = finetune("resnet18", data, tmp_path / "ft", cfg, progress=False, log=lambda _: None)
    torch.manual_seed(cfg.seed)
    model = load_model("resnet18", None, 10, 16, replace_head=True, seed=cfg.seed).module
    rows = finetune_module(model, data, cfg, data_config(model, 16))
    assert len(rows) == 1
    assert rows[0]["train_loss"] == pytest.approx(row["train_loss"], rel=1e-6)
    assert rows[0]["val_top1"] == pytest.approx(row["val_top1"])
    assert evaluate_module(model, data, data_config(model, 16))["top1"] == pytest.approx(row["val_top1"])
