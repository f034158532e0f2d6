"""scripts/example_own_model.py runs end to end (at its --smoke size: the numbers mean nothing, the wiring does)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from train_helpers import ROOT, needs_fashion_mnist, subprocess_env


@pytest.mark.slow
@needs_fashion_mnist
def test_example_own_model_smoke(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "example_own_model.py"), "--smoke", "--out",
                           str(tmp_path)], env=subprocess_env(), cwd=ROOT, text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m[0]: [float(v) for v in m[1:]] for m in re.findall(
        r"^(dense|budget 0\.6|budget 0\.35)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", done.stdout, re.M)}
    assert set(rows) == {"dense", "budget 0.6", "budget 0.35"}, done.stdout
    # measured latency and parameters shrink with the budget
    assert rows["dense"][0] > rows["budget 0.6"][0] > rows["budget 0.35"][0]
    assert rows["dense"][2] > rows["budget 0.6"][2] > rows["budget 0.35"][2]
    assert (tmp_path / "train" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "finetune_0.35" / "final" / "arch.json").is_file()
