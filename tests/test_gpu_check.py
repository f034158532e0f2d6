"""scripts/gpu_check.sh --dry-run: the GPU check's steps (profile, score, problem, solve, export timed in turns
with the dense model, AMP training steps, the export timed in ONNX Runtime) run on CPU at a tiny size and fill
the Markdown table with real measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~2 min on a loaded 2-core machine: every step is a fresh process importing torch
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "MODELS": "resnet50 deit_small"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for model in ("resnet50", "deit_small"):
        report = json.loads((tmp_path / "out" / model / "exported" / "report.json").read_text())
        assert report["timed_in_turns"] and 0 < report["measured_fraction"] < 1.5
        assert abs(report["predicted_fraction"] - 0.5) < 0.05  # solved at budget 0.5
        amp = json.loads((tmp_path / "out" / model / "amp.json").read_text())
        assert amp["finite"] and amp["steps"] == 3 and amp["steps_per_s"] > 0
        ort = json.loads((tmp_path / "out" / model / "exported_onnxruntime" / "report.json").read_text())
        assert ort["runtime"] == "onnxruntime" and ort["measured_ms"] > 0
        assert f"| {model} | eager | float32 | 2 |" in table and f"| {model} | onnxruntime |" in table
