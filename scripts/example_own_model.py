#!/usr/bin/env python
"""Your own trained model, end to end: train, prune at two latency budgets, finetune, and see what it keeps.

1. Train a ResNet-18 (10 classes, 32x32 input) on the built-in Fashion-MNIST for a short time and save it as
   safetensors (``OUT/train/final/model.safetensors``), as you would your own model.
2. Prune it with ``mdp run`` (profile the latency LUT on this CPU, score importance on real images, solve,
   export) at two budgets — the checkpoint's 10-class head is taken from the file, no flags needed.
3. Finetune each export briefly (one epoch on part of the training set), distilling from the dense model.
4. Print top-1 accuracy before pruning, right after pruning, and after finetuning, with measured latency.

Runs on 2 CPU cores in a few minutes (one thread for latency, as the profiler measures). ``--smoke`` runs a
tiny version (seconds of training, tiny subsets) to check that everything is wired; its numbers mean nothing.

    python scripts/example_own_model.py --out runs/own_model
    python scripts/example_own_model.py --smoke --out /tmp/own_model_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdp_cli.train.engine import FinetuneConfig, evaluate, finetune  # noqa: E402

RESOLUTION = 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "example_own_model", help="Working directory.")
    p.add_argument("--budgets", type=float, nargs=2, default=(0.6, 0.35),
                   help="Latency budgets as fractions of the dense model's predicted latency.")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--finetune-images", type=int, default=4000, help="Training images for each finetune.")
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="Threads for training and evaluation.")
    p.add_argument("--smoke", action="store_true", help="Tiny sizes: checks the wiring, numbers mean nothing.")
    args = p.parse_args()
    if args.smoke:
        args.train_images, args.val_images, args.train_epochs, args.finetune_epochs = 256, 128, 1, 1
        args.finetune_images = 128
    return args


def data_spec(args: argparse.Namespace) -> str:
    return f"builtin:fashion-mnist?train={args.train_images}&val={args.val_images}"


def train_dense(args: argparse.Namespace, log) -> Path:
    """Train ResNet-18 from scratch (random init, seed 0): this stands for 'your own trained model'."""
    run = args.out / "train"
    weights = run / "final" / "model.safetensors"
    if weights.is_file():
        log(f"dense model: reusing {weights}")
        return weights
    shutil.rmtree(run, ignore_errors=True)
    cfg = FinetuneConfig(epochs=args.train_epochs, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9,
                         weight_decay=5e-4, warmup_epochs=0.2, label_smoothing=0.0, img_size=RESOLUTION,
                         num_classes=10, augment=False, amp="off", seed=0)
    finetune("resnet18", data_spec(args), run, cfg, device="cpu", progress=not args.smoke, log=log)
    return weights


def prune(args: argparse.Namespace, weights: Path, budget: float, log) -> tuple[Path, dict]:
    """``mdp run`` with a config that names the weights file; returns the export and its latency report."""
    config = args.out / "prune.yaml"
    score_data = f"builtin:fashion-mnist?train={min(args.train_images, 2048)}"
    config.write_text(f"""# written by scripts/example_own_model.py
model: resnet18
resolution: {RESOLUTION}
pretrained: {weights}
space: {{step: null, max_options: 8, multiple: 8, prune_stem: false}}
profile: {{device: cpu, dtype: float32, batch: 1, threads: 1, warmup: {2 if args.smoke else 10},
          repeats: {3 if args.smoke else 20}, grid: 2, lut_dir: {args.out / 'luts'}, stat: median}}
score: {{data: "{score_data}", batches: {2 if args.smoke else 16}, batch_size: 32, seed: 0}}
solve: {{budget: {budget}, latency_model: multidim, time_limit: 60}}
export: {{tolerance: 0.2, onnx: false, measure: true, repeats: {5 if args.smoke else 30}}}
""")
    run_dir = args.out / "prune"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "mdp_cli", "run", str(config), "--run-dir", str(run_dir), "--budget",
               str(budget), "--no-gate", "--quiet"]
    log("$ " + " ".join(command[1:]))
    done = subprocess.run(command, env=env, cwd=ROOT, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"mdp run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    for line in done.stdout.splitlines():
        log("  " + line)
    target = args.out / f"pruned_{budget:g}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run_dir / "exported", target)  # the next budget re-exports into the same run directory
    return target, json.loads((target / "report.json").read_text())


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    data = data_spec(args)
    weights = train_dense(args, log)
    dense = evaluate("resnet18", data, pretrained=str(weights), img_size=RESOLUTION, device="cpu",
                     progress=False, log=log)
    rows = []
    for budget in args.budgets:
        exported, report = prune(args, weights, budget, log)
        after_prune = evaluate(str(exported), data, device="cpu", progress=False, log=log)["top1"]
        cfg = FinetuneConfig(epochs=args.finetune_epochs, batch_size=64, optimizer="sgd", lr=0.02,
                             weight_decay=5e-5, label_smoothing=0.0, augment=False, amp="off", kd="soft",
                             kd_alpha=0.5, kd_temperature=2.0, teacher="resnet18", teacher_pretrained=str(weights))
        run = args.out / f"finetune_{budget:g}"
        shutil.rmtree(run, ignore_errors=True)
        finetune_data = f"builtin:fashion-mnist?train={args.finetune_images}&val={args.val_images}"
        finetune(str(exported), finetune_data, run, cfg, device="cpu", progress=not args.smoke, log=log)
        after_ft = evaluate(str(run / "final"), data, device="cpu", progress=False)["top1"]
        rows.append((f"budget {budget:g}", report, after_prune, after_ft))

    print(f"\nResNet-18 trained on {data} at {RESOLUTION}x{RESOLUTION}; top-1 on {args.val_images} validation "
          f"images; latency: batch 1, 1 CPU thread, median (as measured by mdp export on this machine)")
    print(f"{'model':<12} {'latency ms':>10} {'speed-up':>8} {'params M':>8} {'top-1 pruned':>12} "
          f"{'top-1 finetuned':>15}")
    dense_ms = rows[0][1]["measured_dense_ms"]  # timed by each export next to the pruned model; the first
    print(f"{'dense':<12} {dense_ms:>10.3f} {1.0:>8.2f} {rows[0][1]['dense_params'] / 1e6:>8.2f} "
          f"{dense['top1']:>12.2f} {'':>15}")
    for name, report, pruned_acc, ft_acc in rows:
        ms = report["measured_ms"]
        print(f"{name:<12} {ms:>10.3f} {dense_ms / ms:>8.2f} {report['params'] / 1e6:>8.2f} {pruned_acc:>12.2f} "
              f"{ft_acc:>15.2f}")
    if args.smoke:
        print("(smoke run: tiny data and training, the numbers mean nothing)")
    log("done")


if __name__ == "__main__":
    main()
