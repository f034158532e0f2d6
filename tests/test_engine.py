"""The one profiling engine: deduplication, shared timings, chains of copies, and an interrupted profile keeps
the rows it completed (rerunning resumes without re-measuring them)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from mdp_cli.latency.engine import Measurement, TimingPlan, profile_into_lut
from mdp_cli.latency.lut import Lut
from mdp_cli.latency.ops import register_op

BUILT: list[tuple[int, int]] = []


@register_op("test_engine_linear")
def linear_op(context, sizes, batch):
    BUILT.append((sizes["width"], context["seed"]))
    return nn.Linear(sizes["width"], sizes["width"]).eval(), torch.randn(batch, sizes["width"])


def rows(widths, seed=0, share=None, copies=1):
    return [Measurement("test_engine_linear", f"sig{seed}", f"width={w}", {"seed": seed}, {"width": w},
                        copies=copies, share=share) for w in widths]


def open_lut(path):
    return Lut.open(path, "test-cpu", "float32", 1, 1)


def test_engine_measures_each_row_once_and_shares_timings(tmp_path):
    BUILT.clear()
    lut = open_lut(tmp_path / "lut.csv")
    plan = TimingPlan(chunk=3, rounds=2, reference=True, shuffle=True)
    wanted = rows([8, 16, 32]) + rows([8, 16]) + rows([8], seed=1, share=("same",)) + rows([16], seed=2, share=("same",))
    summary = profile_into_lut(lut, wanted, plan, warmup=1, repeats=4, progress=False)
    assert summary["configurations"] == 5 and summary["measured"] == 5 and summary["timings"] == 4
    # two rounds: every timing built twice; the two rows sharing one timing built once per round
    assert len(BUILT) == 2 * 4
    frame = pd.read_csv(tmp_path / "lut.csv")
    assert len(frame) == 5 and (frame["repeats"] == 4).all() and (frame["ref_ms"] > 0).all()
    shared = frame[frame["signature"].isin(["sig1", "sig2"])]["median_ms"].tolist()
    assert shared[0] == shared[1]
    again = profile_into_lut(open_lut(tmp_path / "lut.csv"), wanted, plan, warmup=1, repeats=4, progress=False)
    assert again["measured"] == 0 and again["reused"] == 5


def test_chain_of_copies_is_divided_by_the_copy_count(tmp_path):
    lut = open_lut(tmp_path / "lut.csv")
    profile_into_lut(lut, rows([256], copies=1) + rows([256], seed=5, copies=4),
                     TimingPlan(chunk=1, rounds=1, reference=False), warmup=2, repeats=15, progress=False)
    one, four = lut.get("sig0", "width=256"), lut.get("sig5", "width=256")
    assert 0.3 < four / one < 3.0  # per copy, not four times one call


def test_an_interrupted_profile_keeps_completed_rows_and_resumes(tmp_path):
    lut = open_lut(tmp_path / "lut.csv")
    chunks = []

    def interrupt_after_two_chunks(message):
        chunks.append(message)
        if len(chunks) == 2:
            raise KeyboardInterrupt

    plan = TimingPlan(chunk=2, rounds=1, reference=False, shuffle=False)
    wanted = rows([8, 16, 24, 32, 40, 48])
    with pytest.raises(KeyboardInterrupt):
        profile_into_lut(lut, wanted, plan, warmup=1, repeats=3, progress=False, log=interrupt_after_two_chunks)
    kept = pd.read_csv(tmp_path / "lut.csv")
    assert sorted(kept["sizes"]) == ["width=16", "width=8"]  # the chunk timed before the interruption
    resumed = profile_into_lut(open_lut(tmp_path / "lut.csv"), wanted, plan, warmup=1, repeats=3, progress=False)
    assert resumed["measured"] == 4 and resumed["reused"] == 2
    assert len(pd.read_csv(tmp_path / "lut.csv")) == 6
