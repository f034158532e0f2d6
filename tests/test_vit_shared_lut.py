"""Several ViTs sharing one LUT directory (issue 12, item 4): deit_tiny and deit_small at 32 px have the
same token count, so some of their ops share signatures (the MLP branch) but not their grid points; the
same model with other --steps has other points too. Each run reads only its own planned points and
profiles only the points it lacks. Also: a label-free score objective through the pipeline."""

from __future__ import annotations

import json
import re

import yaml
from click.testing import CliRunner

from mdp_cli.cli import main

GRID = {"embed": 2, "heads": 2, "qk": 2, "v": 2, "hidden": 2}


def config(model, steps, **extra):
    return {"model": model, "resolution": 32, "num_classes": 5, "random_init": True, "space": {"steps": steps},
            "profile": {"warmup": 1, "repeats": 3, "lut_dir": "luts", "grid": GRID},
            "score": {"data": "synthetic", "batches": 1, "batch_size": 2, **extra},
            "solve": {"budget": 0.6}, "export": {"repeats": 3, "tolerance": 10.0, "measure": False}}


def run(path):
    res = CliRunner().invoke(main, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    # "N configurations measured (K re-timed), M reused": rows whose passes disagreed get a pass more
    found = re.search(r"(\d+) configurations measured(?: \(\d+ re-timed\))?, (\d+) reused", res.output)
    measured, reused = map(int, found.groups())
    return measured, reused


def test_two_vits_and_two_step_settings_share_one_lut(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = {
        "tiny": config("deit_tiny", {"embed": 64, "heads": 1, "qk": 32, "v": 32, "mlp": 384}),
        "small": config("deit_small", {"embed": 128, "heads": 2, "qk": 32, "v": 32, "mlp": 768}),
        # the same model with another embedding step: points 32 and 192 (192 already measured for "tiny")
        "tiny_fine": config("deit_tiny", {"embed": 32, "heads": 1, "qk": 32, "v": 32, "mlp": 384},
                            objective="pseudo_labels", criterion="fisher"),
    }
    counts = {}
    for name, cfg in configs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        counts[name] = run(tmp_path / f"{name}.yaml")
        problem = json.loads((tmp_path / "runs" / name / "problem.json").read_text())
        assert len(problem["terms"]) == 2 + 4 * 12
        solution = json.loads((tmp_path / "runs" / name / "solution.json").read_text())
        assert solution["predicted_latency"] <= solution["budget"] * (1 + 1e-9)
    assert len(list((tmp_path / "luts").glob("*.csv"))) == 1
    assert counts["tiny"][0] > 0 and counts["small"][0] > 0
    # the second tiny space lacks only the rows at its new embedding point (32); the rest of its plan
    # (E = 192, the kernel, the head-count points) is reused from the first run (measured 12, reused 20)
    assert counts["tiny_fine"][1] > 0 and 0 < counts["tiny_fine"][0] < counts["tiny"][0]
    provenance = json.loads((tmp_path / "runs" / "tiny_fine" / "importance.json").read_text())["provenance"]
    assert provenance["objective"] == "pseudo_labels" and provenance["method"] == "fisher_squared_grad"
    # re-running profile for any of them measures nothing
    res = CliRunner().invoke(main, ["profile", "--config", "small.yaml", "-q"])
    assert res.exit_code == 0 and " 0 configurations measured" in res.output, res.output
