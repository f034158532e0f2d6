"""ViTs through the main commands: mdp space|score|export|run dispatch on the model family; mdp solve on a
ViT run directory; one-line errors for options of the other family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mdp_cli.cli import main
from mdp_cli.export.spec import load_exported
from mdp_cli.families import family_of
from mdp_cli.latency.lut import Lut
from mdp_cli.pipeline import load_config, lut_location


def lut_identity(cfg):
    from mdp_cli.latency.timing import device_name

    p = cfg["profile"]
    return device_name(p["device"]), p["dtype"], p["batch"], p["threads"]

CONFIGS = Path(__file__).parents[1] / "configs"
SMALL = ["--model", "deit_tiny", "--img-size", "32", "--num-classes", "5", "--random-init"]


def invoke(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_family_of_names():
    assert [family_of(m) for m in ("deit_tiny", "deit_base_patch16_224", "vit_small", "deit_tiny_distilled",
                                   "test_vit", "resnet50", "mobilenet_v2", "resnet18")] == ["vit"] * 5 + ["cnn"] * 3


def test_configs_parse():
    for name in ("deit_tiny", "deit_small", "deit_base"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg["family"] == "vit" and set(cfg["space"]["steps"]) == {"embed", "heads", "qk", "v", "mlp"}
        assert cfg["resolution"] == 224 and isinstance(cfg["profile"]["grid"], dict)
    assert load_config(CONFIGS / "demo.yaml")["family"] == "cnn"


def test_space_command_for_a_vit():
    out = invoke(["space", "--model", "deit_tiny"])
    assert "model deit_tiny_patch16_224 (vit), input [3, 224, 224]" in out
    assert "embed: size=192 step=16" in out and "24 removable blocks" in out


@pytest.mark.parametrize("args, message", [
    (["space", "--model", "deit_tiny", "--max-options", "4"], "--max-options) applies to CNN models only"),
    (["space", "--model", "resnet18", "--steps", "embed=16"], "--steps) applies to Swin/ViT models only"),
    (["profile", "--model", "resnet18", "--grid", "embed=3"], "for a CNN an integer"),
    (["space", "--model", "deit_tiny", "--steps", "embed"], "expected KEY=N pairs"),
])
def test_options_of_the_other_family_are_one_line_errors(args, message):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_family_in_a_config_must_match(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet18\nfamily: vit\n")
    res = CliRunner().invoke(main, ["space", "--config", str(cfg)])
    assert res.exit_code == 2 and "family 'vit' does not match model 'resnet18'" in res.output


def test_cli_score_export(tmp_path):
    imp = tmp_path / "imp.json"
    invoke(["score", *SMALL, "--steps", "embed=32", "--data", "builtin:digits", "-o", imp, "--batches", "1",
            "--batch-size", "4"])
    record = json.loads(imp.read_text())
    assert record["dims"]["embed"]["options"] == [32, 64, 96, 128, 160, 192]
    assert record["provenance"]["data"] == "builtin:digits" and record["provenance"]["batches"] == 1
    sol = tmp_path / "sol.json"
    choice = {name: rec["options"][-1] for name, rec in record["dims"].items()}  # a solution names every dim
    choice.update({"embed": 64, "blocks.0.attn.qk": 16})
    blocks = {f"blocks.{i}.{b}": True for i in range(12) for b in ("attn", "mlp")}
    sol.write_text(json.dumps({"schema": "mdp.solution", "version": 1, "choice": choice,
                               "blocks": {**blocks, "blocks.1.attn": False}}))
    invoke(["export", *SMALL, "--steps", "embed=32", "--solution", sol, "--importance", imp,
            "-o", tmp_path / "pruned", "--onnx", "--no-measure"])
    assert (tmp_path / "pruned" / "model.onnx").is_file()
    assert load_exported(tmp_path / "pruned").stem.proj.out_channels == 64


def test_run_then_solve_a_vit(tmp_path, monkeypatch):
    """mdp run on a tiny ViT config (real images from builtin:digits), then mdp solve on its run directory."""
    monkeypatch.chdir(tmp_path)
    cfg = {
        "model": "deit_tiny", "resolution": 32, "num_classes": 5, "random_init": True,
        "space": {"steps": {"embed": 64, "heads": 1, "qk": 32, "v": 32, "mlp": 384}},
        "profile": {"warmup": 1, "repeats": 3, "lut_dir": "luts", "grid": {"embed": 2, "heads": 2, "qk": 2, "v": 2, "hidden": 2}},
        "score": {"data": "builtin:digits", "batches": 1, "batch_size": 4},
        "solve": {"budget": 0.5},
        "export": {"repeats": 3, "tolerance": 10.0},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = invoke(["run", "tiny.yaml", "-q"])
    run = tmp_path / "runs" / "tiny"
    assert "[export] done" in out and "latency    measured" in out
    problem = json.loads((run / "problem.json").read_text())
    assert problem["schema"] == "mdp.problem" and len(problem["terms"]) == 2 + 4 * 12
    # the ViT rows live in the shared LUT, the file a CNN with the same profile settings uses
    cnn_lut = lut_location(load_config(None, {"model": "resnet18", "profile": {"lut_dir": "luts"}}))
    assert [p.name for p in (tmp_path / "luts").glob("*.csv")] == [cnn_lut.name]
    model = load_exported(run / "exported")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # unchanged inputs: every stage skipped; profiling again measures nothing (rows reused from the LUT)
    assert invoke(["run", "tiny.yaml", "-q"]).count("unchanged inputs and outputs, skipped") == 6
    out = invoke(["profile", "--config", "tiny.yaml", "-q"])
    assert " 0 configurations measured" in out and " 0 reused" not in out
    frame = Lut.open(cnn_lut, *lut_identity(load_config(tmp_path / "tiny.yaml"))).frame
    assert set(frame["op"]) == {"vit_stem", "vit_head", "vit_qk", "vit_vproj", "vit_sdpa", "vit_mlp"}
    assert frame["sizes"].str.contains("embed=64;heads=1;qk=32;v=32").any()
    invoke(["problem", "--config", "tiny.yaml", "--stat", "p10", "--importance", run / "importance.json", "-o", "p10.json"])
    assert json.loads((tmp_path / "p10.json").read_text())["provenance"]["stat"] == "p10"
    out = invoke(["solve", run, "--budget", "0.6", "-o", tmp_path / "sol.json"])
    solution = json.loads((tmp_path / "sol.json").read_text())
    assert solution["predicted_latency"] <= solution["budget"] * (1 + 1e-9)
    assert solution["budget"] == pytest.approx(0.6 * solution["dense_latency"], rel=1e-6)


def test_export_gate_fails_on_missed_budget(tmp_path):
    from mdp_cli.errors import MdpError
    from mdp_cli.pipeline import load_config, stage_export

    cfg = load_config(None, {"model": "deit_tiny", "resolution": 32, "num_classes": 5, "random_init": True,
                             "profile": {"warmup": 1}, "export": {"repeats": 3, "tolerance": 0.1}})
    from mdp_cli.pipeline import discover

    space = discover(cfg).space
    choice = {d.name: d.size for d in space.dims} | {"embed": 64}
    blocks = {b.name: True for b in space.blocks if b.removable}
    solution = {"choice": choice, "blocks": blocks, "predicted_latency": 1e-4, "budget": 1e-4}
    with pytest.raises(MdpError, match="misses the budget"):
        stage_export(cfg, solution, tmp_path / "a")
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["within_tolerance"] is False and report["measured_ms"] > 0 and report["timed_in_turns"]
    assert report["measured_dense_ms"] > report["measured_ms"] * 0.5
    stage_export(cfg, {**solution, "budget": 1e4}, tmp_path / "b")
