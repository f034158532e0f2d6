"""Two CPU processes with gloo DDP follow the same loss trajectory as one process on the same global batch.

The model has LayerNorm and no dropout and augmentation is off: BatchNorm statistics (per-rank batches
unless SyncBatchNorm, which torch only offers on GPUs) and per-rank random augmentation are the two things
that legitimately make N-process runs differ from a 1-process run.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from train_helpers import ROOT, needs_fashion_mnist, subprocess_env

pytestmark = needs_fashion_mnist

ARGS = ["finetune", "test_vit", "--num-classes", "10", "--img-size", "32", "--data",
        "builtin:fashion-mnist?train=512&val=256", "--epochs", "2", "--batch-size", "32", "--lr", "0.05",
        "--warmup-epochs", "0.5", "--no-augment", "--ema-decay", "0.95", "--no-progress"]


def _losses(run: Path) -> list[float]:
    with open(run / "steps.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_two_process_gloo_matches_one_process(tmp_path: Path) -> None:
    env = subprocess_env()
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "mdp_cli", *ARGS, "-o", str(one)], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mdp_cli", *ARGS, "-o", str(two)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == len(losses_two) == 32
    print(f"max |loss(1 proc) - loss(2 procs)| over 32 steps: {max(abs(a - b) for a, b in zip(losses_one, losses_two)):.2e}")
    assert torch.allclose(torch.tensor(losses_one), torch.tensor(losses_two), rtol=1e-4, atol=1e-5), (
        max(abs(a - b) for a, b in zip(losses_one, losses_two)))
    for name in ("final/model.safetensors", "final_ema/model.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(two / name))
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-5), f"{name}:{key}"
    # metrics reduced over ranks: the validation split is sharded, yet both count the same 256 images
    rows_one = list(csv.DictReader(open(one / "metrics.csv")))
    rows_two = list(csv.DictReader(open(two / "metrics.csv")))
    for r1, r2 in zip(rows_one, rows_two):
        assert abs(float(r1["val_top1"]) - float(r2["val_top1"])) < 0.5
        assert abs(float(r1["val_loss"]) - float(r2["val_loss"])) < 1e-3
    # only rank 0 writes: a single checkpoint file, and no stray temporaries
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["epoch-0002.safetensors"]
    assert not list(two.rglob("*.tmp"))
