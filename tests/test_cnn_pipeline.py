"""`mdp run` and the stage commands end to end on a tiny config, with content-hash skipping."""

import json

import pytest
import yaml
from click.testing import CliRunner

from mdp_cli.cli import main

TINY = {
    "model": "resnet18", "resolution": 32,
    "space": {"max_options": 2, "multiple": 8},
    "profile": {"warmup": 2, "repeats": 5},
    "score": {"data": "synthetic", "batches": 1, "batch_size": 2},
    "solve": {"budget": 0.6},
    "export": {"tolerance": 10.0, "repeats": 5},
}


@pytest.fixture()
def tiny_config(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["profile"]["lut_dir"] = str(tmp_path / "luts")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_then_skip_then_rerun_changed_stage(tiny_config, tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    first = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"])
    assert first.exit_code == 0, first.output
    for name in ("space.json", "importance.json", "problem.json", "solution.json", "exported/arch.json",
                 "exported/model.safetensors", "exported/report.json", "state.json"):
        assert (run_dir / name).is_file(), name
    assert "predicted" in first.output and "measured" in first.output
    second = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"])
    assert second.exit_code == 0, second.output
    assert second.output.count("skipped") == 5, second.output
    third = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q", "--budget", "0.8"])
    assert third.exit_code == 0, third.output
    assert "[profile] unchanged" in third.output and "[problem] unchanged" in third.output
    assert "[solve] done" in third.output and "[export] done" in third.output


def test_stage_commands_and_budget_gate(tiny_config, tmp_path):
    runner = CliRunner()
    c = ["--config", str(tiny_config)]
    r = runner.invoke(main, ["space", *c])
    assert r.exit_code == 0 and "layer2.res" in r.output and "removable blocks" in r.output
    r = runner.invoke(main, ["profile", *c, "-q"])
    assert r.exit_code == 0, r.output
    imp, prob, sol = tmp_path / "imp.json", tmp_path / "prob.json", tmp_path / "sol.json"
    assert runner.invoke(main, ["score", *c, "-o", str(imp)]).exit_code == 0
    r = runner.invoke(main, ["problem", *c, "--importance", str(imp), "-o", str(prob)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["solve", str(prob), "--budget", "0.5", "-o", str(sol)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "exp"
    r = runner.invoke(main, ["export", *c, "--solution", str(sol), "--importance", str(imp), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "params" in r.output and "FLOPs" in r.output and "predicted" in r.output
    # a tolerance no real measurement meets: the gate fails with exit code 2 and one line
    r = runner.invoke(main, ["export", *c, "--solution", str(sol), "--importance", str(imp), "-o", str(out),
                             "--tolerance", "-0.99"])
    assert r.exit_code == 2 and "misses the budget" in r.output


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: resnet18\nprofile: {devise: cpu}\n")
    r = CliRunner().invoke(main, ["space", "--config", str(bad)])
    assert r.exit_code == 2 and "devise" in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(main, ["profile", "--model", "resnet18", "--device", "tpu"])
    assert r.exit_code == 2 and "unknown device" in r.output
