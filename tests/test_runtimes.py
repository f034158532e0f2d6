"""Runtimes (issue 15): latency terms timed in ONNX Runtime by the one engine, the runtime in the LUT's identity,
the export measured and checked in ONNX Runtime, GPU width defaults, and sharded profiling."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import mdp_cli.latency.cnn_ops  # noqa: F401  (registers the CNN ops the profiles below build)
from mdp_cli.cli import main as cli
from mdp_cli.config import load_config
from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.latency.engine import Measurement, TimingPlan, parse_shard, profile_into_lut, shard_of
from mdp_cli.latency.lut import COLUMNS, Lut, lut_filename, read_sidecar
from mdp_cli.latency.ops import register_op
from mdp_cli.latency.runtimes import check_runtime, runner

pytest.importorskip("onnxruntime")


class PairAdd(nn.Module):
    """An op taking a tuple (as the ``add`` op of a residual does)."""

    def forward(self, xs):
        return torch.relu(xs[0] + xs[1])


@register_op("test_runtime_linear")
def linear_op(context, sizes, batch):
    torch.manual_seed(sizes["width"])
    return nn.Linear(sizes["width"], sizes["width"]).eval(), torch.randn(batch, sizes["width"])


@register_op("test_runtime_pair")
def pair_op(context, sizes, batch):
    w = sizes["width"]
    return PairAdd(), (torch.randn(batch, w, 32, 32), torch.randn(batch, w, 32, 32))


def rows(widths, op="test_runtime_linear", sig="lin"):
    return [Measurement(op, sig, f"width={w}", {}, {"width": w}) for w in widths]


def test_onnxruntime_runs_the_same_computation_as_eager():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        want = conv(x).numpy()
    (got,) = runner(conv, x, "onnxruntime")()
    assert got.shape == (2, 16, 10, 10)
    np.testing.assert_allclose(got, want, atol=1e-4)
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    (pair,) = runner(PairAdd(), (a, b), "onnxruntime")()
    np.testing.assert_allclose(pair, torch.relu(a + b).numpy(), atol=1e-6)
    assert torch.equal(runner(PairAdd(), (a, b), "eager")(), torch.relu(a + b))


def test_profile_in_onnxruntime_records_the_runtime_and_refuses_another(tmp_path):
    name = lut_filename("test-cpu", "float32", 1, 1, "onnxruntime")
    assert name == "test-cpu__float32__b1__t1__onnxruntime.csv"
    assert lut_filename("test-cpu", "float32", 1, 1) == "test-cpu__float32__b1__t1.csv"  # eager: the old name
    path = tmp_path / name
    lut = Lut.open(path, "test-cpu", "float32", 1, 1, runtime="onnxruntime")
    # large enough to take clearly more than the run() overhead the engine takes off every sample
    wanted = rows([512, 1024]) + rows([256], op="test_runtime_pair", sig="pair")
    summary = profile_into_lut(lut, wanted, TimingPlan(chunk=2, reference=True), warmup=1, repeats=3,
                               progress=False)
    assert summary["measured"] == 3
    frame = pd.read_csv(path)
    assert set(frame["runtime"]) == {"onnxruntime"} and (frame["median_ms"] > 0).all() and (frame["ref_ms"] > 0).all()
    sidecar = read_sidecar(path)["provenance"]
    import onnxruntime

    assert sidecar["runtime"] == "onnxruntime" and sidecar["runtime_version"] == onnxruntime.__version__
    with pytest.raises(SchemaError) as refused:
        Lut.open(path, "test-cpu", "float32", 1, 1)  # eager asked
    message = str(refused.value)
    assert "\n" not in message and "runtime=onnxruntime" in message and "runtime=eager" in message
    again = Lut.open(path, "test-cpu", "float32", 1, 1, runtime="onnxruntime")
    assert profile_into_lut(again, wanted, TimingPlan(), warmup=1, repeats=3, progress=False)["reused"] == 3


def test_a_lut_from_before_the_runtime_column_is_eager(tmp_path):
    path = tmp_path / "old.csv"
    row = {"op": "x", "signature": "s", "sizes": "", "device": "test-cpu", "dtype": "float32", "batch": 1,
           "threads": 1, "clock": "thread_cpu", "median_ms": 1.0, "spread_ms": 0.1, "p10_ms": 0.9, "ref_ms": 1.0,
           "repeats": 3, "warmup": 1, "created": "2026-01-01T00:00:00+00:00"}
    pd.DataFrame([row], columns=COLUMNS).to_csv(path, index=False)
    assert Lut.open(path, "test-cpu", "float32", 1, 1).get("s", "") == 1.0
    with pytest.raises(SchemaError, match="runtime=eager but runtime=onnxruntime"):
        Lut.open(path, "test-cpu", "float32", 1, 1, runtime="onnxruntime")


def test_runtimes_that_cannot_run_here_are_refused_in_one_line():
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        with pytest.raises(MdpError) as refused:
            check_runtime("tensorrt", "cpu")
        assert "\n" not in str(refused.value) and "--runtime tensorrt needs" in str(refused.value)
        assert "--device cuda" in str(refused.value)
    with pytest.raises(MdpError, match="float32"):
        check_runtime("onnxruntime", "cpu", "float16")
    with pytest.raises(MdpError, match="runtime"):
        load_config(None, {"profile": {"runtime": "tvm"}})
    assert load_config(None, {"profile": {"runtime": "onnxruntime"}})["profile"]["runtime"] == "onnxruntime"
    assert load_config(None, {})["profile"]["runtime"] == "eager"


def test_widths_default_to_multiples_of_8_on_cuda_in_half_precision():
    cuda_half = {"profile": {"device": "cuda", "dtype": "fp16"}}
    assert load_config(None, {"model": "resnet18", **cuda_half})["space"]["multiple"] == 8
    assert load_config(None, {"model": "resnet18", "profile": {"device": "cuda", "dtype": "bf16"}})["space"]["multiple"] == 8
    assert load_config(None, {"model": "resnet18", **cuda_half, "space": {"multiple": 2}})["space"]["multiple"] == 2
    assert load_config(None, {"model": "resnet18", "profile": {"device": "cuda"}})["space"]["multiple"] == 1
    assert load_config(None, {"model": "resnet18"})["space"]["multiple"] == 1
    assert "multiple" not in load_config(None, {"model": "deit_tiny", **cuda_half})["space"]


def test_shards_split_the_rows_disjointly_and_merge_into_one_lut(tmp_path):
    wanted = rows([4, 8, 12, 16, 20, 24, 28, 32, 40, 48])
    plan = TimingPlan(chunk=4, reference=False)
    whole = Lut.open(tmp_path / "whole.csv", "test-cpu", "float32", 1, 1)
    profile_into_lut(whole, wanted, plan, warmup=0, repeats=2, progress=False)
    parts = [profile_into_lut(Lut.open(tmp_path / "sharded.csv", "test-cpu", "float32", 1, 1), wanted, plan,
                              warmup=0, repeats=2, progress=False, shard=(i, 2)) for i in (1, 2)]
    assert all(p["measured"] > 0 for p in parts) and sum(p["measured"] for p in parts) == len(wanted)
    assert parts[0]["other_shards"] == parts[1]["measured"]
    keys = lambda f: set(zip(f["signature"], f["sizes"]))  # noqa: E731
    assert keys(pd.read_csv(tmp_path / "sharded.csv")) == keys(pd.read_csv(tmp_path / "whole.csv"))
    assert [shard_of(("lin", "width=8"), 3)] * 2 == [shard_of(("lin", "width=8"), 3) for _ in range(2)]
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    for bad in ("3/2", "0/2", "a/b", "1"):
        with pytest.raises(MdpError, match="--shard"):
            parse_shard(bad)


def test_cli_profiles_and_exports_in_onnxruntime(tmp_path):
    run = CliRunner()
    common = ["-m", "resnet18", "-r", "32", "--random-init", "--max-options", "2", "--lut-dir", str(tmp_path / "luts"),
              "--runtime", "onnxruntime"]
    out = run.invoke(cli, ["profile", *common, "--repeats", "2", "--warmup", "0", "-q", "--shard", "1/2"])
    assert out.exit_code == 0, out.output
    assert "runtime onnxruntime" in out.output and "shard 1/2" in out.output
    assert list((tmp_path / "luts").glob("*__onnxruntime.csv"))
    exported = tmp_path / "exported"
    out = run.invoke(cli, ["export", *common, "--onnx", "-o", str(exported)])
    assert out.exit_code == 0, out.output
    report = json.loads((exported / "report.json").read_text())
    assert report["runtime"] == "onnxruntime" and report["measured_ms"] > 0 and report["measured_dense_ms"] > 0
    assert report["onnx"]["onnxruntime"] and report["onnx"]["onnxruntime_max_abs_diff"] < 1e-3


@pytest.mark.parametrize("op, sizes", [("vit_attn", {"embed": 64, "heads": 2, "qk": 16, "v": 24}),
                                       ("vit_sdpa", {"heads": 3, "qk": 8, "v": 16}),
                                       ("vit_mlp", {"embed": 64, "hidden": 96})])
def test_vit_ops_run_in_onnxruntime_as_in_eager(op, sizes):
    """The ViT terms (attention branch with Q != V, the SDPA kernel alone, the MLP) export and compute the same."""
    import mdp_cli.latency.vit_ops  # noqa: F401
    from mdp_cli.latency.ops import get_op

    torch.manual_seed(0)
    module, x = get_op(op)({"tokens": 17, "full_head_dim": 32}, sizes, 2)
    with torch.inference_mode():
        want = module(x).numpy()
    (got,) = runner(module, x, "onnxruntime")()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
