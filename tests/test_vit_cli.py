"""ViT CLI commands and the pipeline (with a stand-in solver where the real one is not in this build)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mdp_cli.export.spec import load_exported
from mdp_cli.vit_cli import run_vit_pipeline, vit_group

SMALL = ["--model", "deit_tiny", "--img-size", "32", "--num-classes", "5"]


def half_solver(problem, budget):
    choice = {d.name: d.options[len(d.options) // 2] for d in problem.dims}
    kept = {b.name: not b.name.endswith(".3.mlp") for b in problem.blocks}
    return types.SimpleNamespace(choice=choice, kept=kept)


def test_configs_parse():
    for name in ("deit_tiny", "deit_small", "deit_base"):
        cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / f"{name}.yaml").read_text())
        assert cfg["model"] == name and cfg["family"] == "vit" and set(cfg["space"]["steps"]) == {"embed", "heads", "qk", "v", "mlp"}


def test_pipeline_runs_for_a_vit(tmp_path):
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "deit_tiny.yaml").read_text())
    cfg.update(img_size=32, num_classes=5)
    cfg["profile"].update(samples=3, warmup=1, grid={"embed": 2, "heads": 2, "qk": 2, "v": 2, "hidden": 2})
    cfg["score"].update(batches=1, batch_size=2)
    cfg["export"].update(onnx=False, samples=3)
    paths = run_vit_pipeline(cfg, tmp_path / "run", solver=half_solver, log=lambda s: None)
    model = load_exported(paths["export"])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    arch = json.loads((paths["export"] / "arch.json").read_text())
    assert arch["embed_dim"] == 112 and arch["blocks"][3]["mlp"] is None
    problem = json.loads(paths["problem"].read_text())
    assert problem["schema"] == "mdp.problem" and len(problem["terms"]) == 38
    # re-running skips every finished stage
    mtime = paths["lut"].stat().st_mtime_ns
    run_vit_pipeline(cfg, tmp_path / "run", solver=half_solver, log=lambda s: None)
    assert paths["lut"].stat().st_mtime_ns == mtime


def test_cli_space_score_export(tmp_path):
    runner = CliRunner()
    res = runner.invoke(vit_group, ["space", *SMALL, "--steps", "embed=32"])
    assert res.exit_code == 0, res.output
    space = json.loads(res.output)
    assert space["dims"][0]["options"] == [32, 64, 96, 128, 160, 192]
    imp = tmp_path / "imp.json"
    res = runner.invoke(vit_group, ["score", *SMALL, "--data", "synthetic", "--out", str(imp), "--batches", "1",
                                    "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    sol = tmp_path / "sol.json"
    sol.write_text(json.dumps({"schema": "mdp.solution", "version": 1, "choice": {"embed": 64, "blocks.0.attn.qk": 16},
                               "blocks": {"blocks.1.attn": False}}))
    res = runner.invoke(vit_group, ["export", *SMALL, "--solution", str(sol), "--importance", str(imp),
                                    "--out", str(tmp_path / "pruned"), "--onnx"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pruned" / "model.onnx").is_file()
    assert load_exported(tmp_path / "pruned").stem.proj.out_channels == 64


def test_export_gate_fails_on_missed_budget(tmp_path):
    from mdp_cli.errors import MdpError
    from mdp_cli.models import create_model
    from mdp_cli.vit_cli import export_stage

    model = create_model("deit_tiny", img_size=32, num_classes=5)
    solution = {"predicted_latency": 1e-4, "budget": 1e-4}
    measure = {"device": "cpu", "batch": 1, "warmup": 1, "samples": 3}
    with pytest.raises(MdpError, match="misses the budget"):
        export_stage(model, {"embed": 64}, {}, tmp_path / "a", solution=solution, measure=measure)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["within_tolerance"] is False and report["measured_ms"] > 0
    export_stage(model, {"embed": 64}, {}, tmp_path / "b", solution={**solution, "budget": 1e4}, measure=measure)
