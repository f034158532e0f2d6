"""`mdp run` and the stage commands end to end on a tiny config, with content-hash skipping."""

import json

import pytest
import yaml
from click.testing import CliRunner

from mdp_cli.cli import main

TINY = {
    "model": "resnet18", "resolution": 32, "random_init": True,
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
    for name in ("space.json", "calibration.json", "importance.json", "problem.json", "solution.json", "exported/arch.json",
                 "exported/model.safetensors", "exported/report.json", "state.json"):
        assert (run_dir / name).is_file(), name
    assert "predicted" in first.output and "measured" in first.output
    second = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"])
    assert second.exit_code == 0, second.output
    assert second.output.count("skipped") == 6, second.output  # profile, calibrate, score, problem, solve, export
    third = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q", "--budget", "0.8"])
    assert third.exit_code == 0, third.output
    assert "[profile] unchanged" in third.output and "[problem] unchanged" in third.output
    assert "[calibrate] unchanged" in third.output
    assert "[solve] done" in third.output and "[export] done" in third.output
    # score.coupled: the default sums a residual width's norms; --coupled mean re-scores (and only what
    # follows), dividing by their count (layer2.res: layer2.0's shortcut BN and both blocks' bn2)
    summed = json.loads((run_dir / "importance.json").read_text())
    assert summed["provenance"]["coupled"] == "sum" and summed["dims"]["layer2.res"]["layers"] == 3
    fourth = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q", "--coupled", "mean"])
    assert fourth.exit_code == 0, fourth.output
    assert "[profile] unchanged" in fourth.output and "[score] done" in fourth.output
    averaged = json.loads((run_dir / "importance.json").read_text())
    assert averaged["provenance"]["coupled"] == "mean"
    assert averaged["dims"]["layer2.res"]["scores"] == pytest.approx(
        [v / 3 for v in summed["dims"]["layer2.res"]["scores"]], rel=1e-12)
    assert averaged["dims"]["layer2.0.conv1"] == summed["dims"]["layer2.0.conv1"]
    assert json.loads((run_dir / "problem.json").read_text())["provenance"]["coupled"] == "mean"


def test_a_cached_calibration_of_another_method_is_fitted_again(tiny_config, tmp_path, monkeypatch):
    """The calibration's cache key names its method: a run directory calibrated before the configurations or
    the fit changed is calibrated again, not kept."""
    import mdp_cli.latency.calibration as calibration

    runner = CliRunner()
    run_dir = tmp_path / "run"
    first = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"])
    assert first.exit_code == 0, first.output
    assert json.loads((run_dir / "calibration.json").read_text())["provenance"]["method"] == calibration.METHOD
    monkeypatch.setattr(calibration, "METHOD", calibration.METHOD + 1)
    second = runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"])
    assert second.exit_code == 0, second.output
    assert "[profile] unchanged" in second.output and "[calibrate] done" in second.output, second.output
    assert json.loads((run_dir / "calibration.json").read_text())["provenance"]["method"] == calibration.METHOD



def test_run_remakes_edited_outputs_and_never_caches_a_missed_budget(tiny_config, tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    args = ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"]
    assert runner.invoke(main, args).exit_code == 0
    # a hand-edited problem and corrupted exported weights are re-made, not "unchanged, skipped"
    problem = json.loads((run_dir / "problem.json").read_text())
    problem["name"] = "edited by hand"
    (run_dir / "problem.json").write_text(json.dumps(problem))
    weights = run_dir / "exported" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "[problem] done" in again.output and "[export] done" in again.output
    assert "[score] unchanged" in again.output
    assert json.loads((run_dir / "problem.json").read_text())["name"] != "edited by hand"
    # the gate judges fractions of dense measured in turns; a missed budget is measured again on the next run
    report = json.loads((run_dir / "exported" / "report.json").read_text())
    assert report["measured_fraction"] == pytest.approx(report["measured_ms"] / report["measured_dense_ms"])
    assert report["budget_fraction"] == pytest.approx(report["budget_ms"] / report["dense_predicted_ms"])
    strict = runner.invoke(main, [*args, "--budget", "0.001ms"])
    assert strict.exit_code == 2 and "below the smallest reachable latency" in strict.output
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["export"]["tolerance"] = -0.99
    tiny_config.write_text(yaml.safe_dump(cfg))
    missed = runner.invoke(main, args)
    assert missed.exit_code == 2 and "of the dense latency (timed in turns" in missed.output, missed.output
    state = json.loads((run_dir / "state.json").read_text())
    assert "export" not in state["stages"] and state["version"] == 2
    rerun = runner.invoke(main, args)
    assert "[export] done" in rerun.output and rerun.exit_code == 2

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


def test_ensure_problem_from_config_and_run_dir(tiny_config, tmp_path, monkeypatch):
    from mdp_cli.pipeline import ensure_problem

    monkeypatch.chdir(tmp_path)
    lines = []
    path = ensure_problem(tiny_config, echo=lines.append, progress=False)
    assert path.resolve() == (tmp_path / "runs" / "tiny" / "problem.json").resolve() and path.is_file()
    assert ensure_problem(path.parent, echo=lines.append) == path
    assert any("skipped" in line for line in lines)


def test_score_reads_local_pretrained_weights(tiny_config, tmp_path):
    import torch
    from safetensors.torch import save_file

    from mdp_cli.importance.taylor import read_importance
    from mdp_cli.models import create_model

    model = create_model("resnet18")
    torch.manual_seed(5)
    with torch.no_grad():
        model.bn1.weight.mul_(3.0)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    runner = CliRunner()
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert runner.invoke(main, ["score", "--config", str(tiny_config), "-o", str(out_a)]).exit_code == 0
    r = runner.invoke(main, ["score", "--config", str(tiny_config), "--pretrained", str(weights), "-o", str(out_b)])
    assert r.exit_code == 0, r.output
    assert read_importance(out_b)["provenance"]["pretrained"] == str(weights)
    assert read_importance(out_a)["dims"] != read_importance(out_b)["dims"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(main, ["score", "--config", str(tiny_config), "--pretrained", str(bad), "-o", str(out_b)])
    assert r.exit_code == 2 and "bad.pt" in r.output


def test_pipeline_problem_carries_counts_and_solves_a_parameter_cap(tiny_config, tmp_path):
    from mdp_cli.export.spec import load_exported
    from mdp_cli.solve import load_problem, solve_problem

    runner = CliRunner()
    run_dir = tmp_path / "run"
    assert runner.invoke(main, ["run", str(tiny_config), "--run-dir", str(run_dir), "-q"]).exit_code == 0
    problem = load_problem(run_dir / "problem.json")
    assert problem.has_resource("params") and problem.has_resource("flops")
    pruned = sum(p.numel() for p in load_exported(run_dir / "exported").parameters())  # exported at budget 0.6
    cap = 0.4 * problem.resource("params", problem.dense_choice())
    result = runner.invoke(main, ["solve", str(run_dir / "problem.json"), "--budget", "0.9", "--max-params",
                                  str(int(cap)), "-o", str(tmp_path / "capped.json")])
    assert result.exit_code == 0, result.output
    capped = json.loads((tmp_path / "capped.json").read_text())
    solution = solve_problem(problem, 0.9, max_params=int(cap))
    indices = {d.name: d.options.index(solution.choice[d.name]) for d in problem.dims}
    assert problem.resource("params", indices, solution.kept) <= cap
    assert capped["objective"] == pytest.approx(solution.objective)
    # the counts are the exported models': the dense configuration counts the dense model's parameters
    assert problem.resource("params", problem.dense_choice()) > pruned


def test_profile_rounds_flag_reaches_the_lut_and_is_validated(tiny_config, tmp_path):
    """``mdp profile --rounds 3 --repeats 4``: every row sampled in three passes of two calls (6 samples, 8 where
    a disturbed row was timed once more); ``--rounds 0`` is refused in one line naming the flag."""
    import pandas as pd

    runner = CliRunner()
    lut_dir = tmp_path / "rounds_luts"
    done = runner.invoke(main, ["profile", "-c", str(tiny_config), "--lut-dir", str(lut_dir), "--rounds", "3",
                                "--repeats", "4", "-q"])
    assert done.exit_code == 0, done.output
    frame = pd.read_csv(next(lut_dir.glob("*.csv")))
    assert sorted(set(frame["repeats"] - 2 * frame["rechecked"])) == [6]
    bad = runner.invoke(main, ["profile", "-c", str(tiny_config), "--lut-dir", str(lut_dir), "--rounds", "0", "-q"])
    assert bad.exit_code != 0 and "--rounds" in bad.output and len(bad.output.strip().splitlines()) == 1
