"""`mdp calibrate` on a real (tiny) CNN: it times exported configurations, writes a valid mdp.calibration, and
`mdp problem --calibration` applies exactly max(0, scale * table + overhead) + weight_cost * weights; bad
settings and foreign files are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mdp_cli.cli import main
from mdp_cli.latency.calibration import read_calibration
from mdp_cli.solve import load_problem

MODEL = ["-m", "tv:resnet18", "--random-init", "-r", "32", "--max-options", "3", "--multiple", "8"]


@pytest.fixture()
def profiled(tmp_path):
    args = [*MODEL, "--lut-dir", str(tmp_path / "luts")]
    out = CliRunner().invoke(main, ["profile", *args, "--warmup", "2", "--repeats", "5", "-q"])
    assert out.exit_code == 0, out.output
    return args


def test_calibrate_then_problem_applies_it(profiled, tmp_path):
    runner = CliRunner()
    calibration_file = tmp_path / "calibration.json"
    out = runner.invoke(main, ["calibrate", *profiled, "--configs", "4", "--warmup", "2", "--repeats", "10", "-o", str(calibration_file)])
    assert out.exit_code == 0, out.output
    assert "timing 4 pruned configurations, each in turns with the dense model (10 calls each, in 2 passes" in out.output
    calibration = read_calibration(calibration_file)
    fit = calibration.fit
    assert fit["configurations"] == 5 and len(fit["measured"]) == 5 and all(m > 0 for m in fit["measured"])
    # every pruned configuration runs faster than the dense model it was cut from
    assert max(fit["measured"][1:]) < fit["measured"][0]
    assert set(fit) >= {"median_error_before", "median_error_held_out", "accepted", "fitted_scales"}
    data = json.loads(calibration_file.read_text())
    assert data["provenance"]["model"] == "tv:resnet18" and data["provenance"]["configs"] == 4

    plain, calibrated = tmp_path / "plain.json", tmp_path / "calibrated.json"
    assert runner.invoke(main, ["problem", *profiled, "-o", str(plain)]).exit_code == 0
    out = runner.invoke(main, ["problem", *profiled, "--calibration", str(calibration_file), "-o", str(calibrated)])
    assert out.exit_code == 0, out.output
    a, b = load_problem(plain), load_problem(calibrated)
    assert fit["predicted_before"][0] == pytest.approx(a.dense_latency)
    classes = calibration.term_classes
    for ta, tb in zip(a.terms, b.terms):
        scale = calibration.scales[classes[ta.name]]
        expected = (np.maximum(0.0, scale * ta.table + calibration.overhead)
                    + calibration.weight_cost * np.asarray(ta.resources["params"], float))
        np.testing.assert_allclose(tb.table, expected, rtol=1e-12)
    assert b.provenance["calibration"]["file"] == str(calibration_file)


def test_calibrate_refusals(profiled, tmp_path):
    runner = CliRunner()
    few = runner.invoke(main, ["calibrate", *profiled, "--configs", "2", "-o", str(tmp_path / "c.json")])
    assert few.exit_code == 2 and "calibrate.configs (--calibrate-configs) = 2 is not allowed" in few.output
    # two passes need a call each
    once = runner.invoke(main, ["calibrate", *profiled, "--repeats", "1", "-o", str(tmp_path / "c.json")])
    assert once.exit_code != 0 and "calibrate.repeats" in once.output and not (tmp_path / "c.json").exists()
    # a calibration of another model cannot be applied to this one's problem
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "mdp.calibration", "version": 1, "provenance": {},
                                 "scales": {"compute": 1.0, "memory": 0.5}, "overhead": 0.0,
                                 "term_classes": {"blocks.0.mlp": "compute"}, "fit": {}}))
    out = runner.invoke(main, ["problem", *profiled, "--calibration", str(other), "-o", str(tmp_path / "p.json")])
    assert out.exit_code != 0 and "no class for term" in out.output and str(other) in out.output
    assert not (tmp_path / "p.json").exists()
