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


# -- drift robustness (docs/latency.md): rows relative to the reference op, re-timed passes ------------------

SPIN_CALLS: dict[int, int] = {}


class _Spin(nn.Module):
    """Burns a fixed amount of CPU per call; slowed down 3x on calls ``slow`` (a disturbed pass)."""

    def __init__(self, key: int, work: int, slow: range):
        super().__init__()
        self.key, self.work, self.slow = key, work, slow

    def forward(self, x):
        n = SPIN_CALLS.get(self.key, 0)
        SPIN_CALLS[self.key] = n + 1
        total = 0
        for i in range(self.work * (3 if n in self.slow else 1)):
            total += i
        return x


@register_op("test_engine_spin")
def spin_op(context, sizes, batch):
    return _Spin(sizes["width"], 4000, range(*context["slow"])), torch.zeros(batch, 1)


def test_a_pass_disturbed_for_one_row_is_timed_again(tmp_path):
    SPIN_CALLS.clear()
    # three passes of warm-up 1 + 4 calls; width 2 runs 3x slower during its second pass (calls 5..9)
    wanted = [Measurement("test_engine_spin", "spin", f"width={w}", {"slow": slow}, {"width": w})
              for w, slow in ((1, [0, 0]), (2, [5, 10]))]
    lut = open_lut(tmp_path / "lut.csv")
    summary = profile_into_lut(lut, wanted, TimingPlan(chunk=2, rounds=3, reference=True, recheck=0.25),
                               warmup=1, repeats=12, progress=False)
    frame = pd.read_csv(tmp_path / "lut.csv").set_index("sizes")
    # the disturbed row is always re-timed; on a loaded machine the other one may be too
    assert frame.loc["width=2", "rechecked"] == 1 and frame.loc["width=2", "repeats"] == 16
    assert summary["rechecked"] == int(frame["rechecked"].sum())
    assert frame.loc["width=1", "repeats"] == 12 + 4 * int(frame.loc["width=1", "rechecked"])
    # the median over four passes is not the slow pass's (3x): both rows cost the same work (the margin is
    # for a loaded machine: other processes move a Python loop's CPU time by tens of per cent)
    assert 0.5 < lut.get("spin", "width=2") / lut.get("spin", "width=1") < 2.0
    assert frame["ref_ratio"].gt(0).all()


def test_ref_statistic_scales_rows_back_to_one_reference_speed(tmp_path):
    """Two rows of equal work, the second timed while the machine ran 2x slower (its reference too)."""
    base = {"op": "x", "device": "test-cpu", "dtype": "float32", "batch": 1, "threads": 1, "clock": "thread_cpu",
            "spread_ms": 0.1, "repeats": 10, "warmup": 1, "created": "", "runtime": "eager"}
    rows_ = [dict(base, signature="a", sizes="c=1", median_ms=3.0, p10_ms=2.9, ref_ms=1.0, ref_ratio=3.0),
             dict(base, signature="a", sizes="c=2", median_ms=6.0, p10_ms=5.8, ref_ms=2.0, ref_ratio=3.0),
             dict(base, signature="b", sizes="", median_ms=1.0, p10_ms=1.0, ref_ms=float("nan"))]
    path = tmp_path / "lut.csv"
    lut = open_lut(path)
    lut.add_rows(rows_)
    lut.save()
    median = Lut.open(path, "test-cpu", "float32", 1, 1)
    ref = Lut.open(path, "test-cpu", "float32", 1, 1, stat="ref")
    assert (median.get("a", "c=1"), median.get("a", "c=2")) == (3.0, 6.0)
    assert ref.get("a", "c=1") == pytest.approx(4.5) and ref.get("a", "c=2") == pytest.approx(4.5)
    assert ref.get("b", "") == 1.0  # no ratio (no reference): its median


def test_multi_input_ops_chain_through_their_carried_input():
    from mdp_cli.modules.chain import MultiInputChain
    from mdp_cli.latency.cnn_ops import add, mul

    x = (torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3))
    module, _ = add({"c": 4, "hw": [3, 3]}, {}, 1)
    chain = MultiInputChain([module, add({"c": 4, "hw": [3, 3]}, {}, 1)[0]], x)
    assert torch.allclose(chain(x), x[0] + 2 * x[1])
    gate_module, (gate, fmap) = mul({"c": 4, "hw": [3, 3], "gate": 0}, {}, 1)
    chain = MultiInputChain([gate_module, gate_module], (gate, fmap))
    assert chain.carry == 1 and torch.allclose(chain((gate, fmap)), gate * gate * fmap)


def test_profile_rounds_split_the_repeats_over_that_many_passes(tmp_path):
    """``profile.rounds`` (``--rounds``): the family's plan with that many passes, each row sampled in every one
    of them (repeats split among the passes, rounded up); one pass leaves nothing to re-check."""
    from mdp_cli.latency.engine import with_rounds

    plan = TimingPlan(chunk=2, rounds=2, reference=True, recheck=0.2)
    assert with_rounds(plan, None) is plan
    assert with_rounds(plan, 1) == TimingPlan(chunk=2, rounds=1, reference=True, recheck=0.0)
    eight = with_rounds(plan, 8)
    assert (eight.rounds, eight.recheck, eight.chunk) == (8, 0.2, 2)
    lut = open_lut(tmp_path / "lut.csv")
    profile_into_lut(lut, rows([8, 16, 32]), with_rounds(plan, 4), warmup=1, repeats=6, progress=False)
    frame = pd.read_csv(tmp_path / "lut.csv")
    # 6 repeats over 4 passes: 2 samples in each, 8 in all; a re-checked row got a fifth pass
    assert sorted(set(frame["repeats"] - 2 * frame["rechecked"])) == [8]
