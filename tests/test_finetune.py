"""Finetuning: a pruned model recovers accuracy; resume after SIGKILL is bit-exact; presets and schedules."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mdp_cli.cli import main
from mdp_cli.export.spec import load_exported
from mdp_cli.train.engine import FinetuneConfig, evaluate, finetune, lr_factor
from train_helpers import (ROOT, SMALL_DATA, TinyCNN, export_tiny, mdp_command, needs_fashion_mnist, prune_tiny,
                           subprocess_env)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]
needs_data = needs_fashion_mnist


@needs_data
def test_finetune_recovers_pruned_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_tiny(tmp_path / "dense0", TinyCNN([32, 64, 64]))
    dense_cfg = FinetuneConfig(epochs=2, batch_size=64, lr=0.1, img_size=28, augment=False, label_smoothing=0.0)
    finetune(str(tmp_path / "dense0"), SMALL_DATA, tmp_path / "dense_run", dense_cfg, progress=False, log=lambda _: None)
    dense_dir = tmp_path / "dense_run" / "final"
    dense_acc = evaluate(str(dense_dir), SMALL_DATA, img_size=28, progress=False)["top1"]

    export_tiny(tmp_path / "pruned", prune_tiny(load_exported(dense_dir), keep=0.35))
    exported_acc = evaluate(str(tmp_path / "pruned"), SMALL_DATA, img_size=28, progress=False)["top1"]

    result = CliRunner().invoke(main, [
        "finetune", str(tmp_path / "pruned"), "--data", SMALL_DATA, "-o", str(tmp_path / "ft"), "--epochs", "2",
        "--batch-size", "64", "--lr", "0.05", "--img-size", "28", "--no-augment", "--kd", "soft",
        "--teacher", str(dense_dir), "--kd-temperature", "2", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    finetuned_acc = evaluate(str(tmp_path / "ft" / "final"), SMALL_DATA, img_size=28, progress=False)["top1"]
    print(f"dense {dense_acc:.2f}  pruned after export {exported_acc:.2f}  after finetune {finetuned_acc:.2f}")
    assert finetuned_acc > exported_acc + 3.0
    rows = (tmp_path / "ft" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 3
    assert json.loads((tmp_path / "ft" / "final" / "arch.json").read_text())["family"] == "test_tiny_cnn"


def _finetune_args(out: Path, *extra: str) -> list[str]:
    # augmentation + EMA + warm-up + AdamW: every source of state that resume has to restore
    return mdp_command("finetune", "test_resnet", "--num-classes", "10", "--img-size", "32",
                       "--data", "builtin:fashion-mnist?train=1024&val=128", "-o", str(out), "--epochs", "2",
                       "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.002", "--warmup-epochs", "1",
                       "--ema-decay", "0.9", "--no-progress", *extra)


@needs_data
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["sigkill", "sigint"])
def test_resume_after_sigkill_is_bit_exact(tmp_path: Path, sig: int) -> None:
    env = subprocess_env()
    reference = tmp_path / "reference"  # runs beside the one that gets killed
    ref_proc = subprocess.Popen(_finetune_args(reference), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_finetune_args(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pointer, metrics = killed / "checkpoint.json", killed / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (pointer.exists() and metrics.exists()):  # metrics.csv follows the epoch-1 checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    epoch_seconds = float(metrics.read_text().splitlines()[1].split(",")[9])
    time.sleep(0.4 * epoch_seconds)  # about 40 % into epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate()
    if sig == signal.SIGINT:  # Ctrl-C: one line and exit 130, the epoch-1 checkpoint intact
        assert proc.returncode == 130 and "mdp: interrupted" in err and "Traceback" not in err, err
    assert json.loads(pointer.read_text())["epoch"] == 1, "killed too late: epoch 2 had already finished"
    assert not (killed / "final").exists()

    refused = subprocess.run(_finetune_args(killed), env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(_finetune_args(killed, "--resume"), env=env, check=True, cwd=ROOT, capture_output=True)
    assert ref_proc.wait() == 0, ref_proc.stderr.read()[-2000:]

    for name in ("final/model.safetensors", "final_ema/model.safetensors"):
        ref, got = load_file(str(reference / name)), load_file(str(killed / name))
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"{name} differs after resume"
    assert (reference / "metrics.csv").read_text().count("\n") == (killed / "metrics.csv").read_text().count("\n")
    assert (reference / "steps.csv").read_text() == (killed / "steps.csv").read_text()


@needs_data
def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    args = ["finetune", "test_resnet", "--num-classes", "10", "--img-size", "32", "--data",
            "builtin:fashion-mnist?train=64&val=32", "-o", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "32", "--no-progress"]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, args + ["--resume", "--lr", "0.3"])
    assert result.exit_code == 2 and "different settings (lr)" in result.output


def test_presets_load_and_flags_override(tmp_path: Path, monkeypatch) -> None:
    import mdp_cli.train.engine as engine

    calls = []
    monkeypatch.setattr(engine, "finetune", lambda model, data, out, cfg, **kw: calls.append(cfg) or {})
    result = CliRunner().invoke(main, ["finetune", "resnet50", "--config", str(ROOT / "configs/finetune_resnet50_paper.yaml"),
                                       "--data", "x", "-o", str(tmp_path), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    cfg = calls[-1]
    assert (cfg.optimizer, cfg.momentum, cfg.lr_per_1024, cfg.weight_decay, cfg.label_smoothing, cfg.epochs) == (
        "sgd", 0.875, 1.024, 3.0517578125e-05, 0.1, 3)
    assert abs(cfg.base_lr() - 1.024 * cfg.batch_size / 1024) < 1e-12
    result = CliRunner().invoke(main, ["finetune", "deit_base", "--config", str(ROOT / "configs/finetune_deit.yaml"),
                                       "--data", "x", "-o", str(tmp_path), "--teacher", "deit_base"])
    assert result.exit_code == 0, result.output
    assert (calls[-1].optimizer, calls[-1].kd, calls[-1].teacher, calls[-1].epochs) == ("adamw", "soft", "deit_base", 300)
    bad = tmp_path / "bad.yaml"
    bad.write_text("batchsize: 3\n")
    result = CliRunner().invoke(main, ["finetune", "m", "--config", str(bad), "--data", "x", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "unknown keys ['batchsize']" in result.output


def test_lr_schedule_shapes() -> None:
    total, warm = 100, 10
    assert lr_factor(0, total, warm, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(10, total, warm, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, total, warm, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(70, total, 0, "constant", 0.0) == 1.0


@needs_data
def test_hard_distillation_for_deit_distillation_token(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    teacher = timm.create_model("test_vit", num_classes=10, img_size=32)  # a teacher needs weights: these
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    common = ["--num-classes", "10", "--img-size", "32", "--data", "builtin:fashion-mnist?train=64&val=32",
              "--epochs", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "1e-3", "--kd", "hard",
              "--teacher", "test_vit", "--teacher-pretrained", str(tmp_path / "teacher.safetensors"),
              "--clip-grad", "1.0", "--no-progress"]
    result = CliRunner().invoke(main, ["finetune", "deit_tiny_distilled", "-o", str(tmp_path / "a"), *common])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "final" / "model.safetensors").is_file()
    result = CliRunner().invoke(main, ["finetune", "test_resnet", "-o", str(tmp_path / "b"), *common])
    assert result.exit_code == 2 and "distillation token" in result.output
    result = CliRunner().invoke(main, ["finetune", "test_resnet", "-o", str(tmp_path / "c"), "--kd", "soft",
                                       *common[:-9], "--no-progress"])
    assert result.exit_code == 2 and "needs --teacher" in result.output


def test_resume_on_a_mistyped_directory_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["finetune", "test_resnet", "--num-classes", "10", "--img-size", "32",
                                       "--data", "builtin:fashion-mnist?train=64&val=32", "--resume",
                                       "-o", str(tmp_path / "typo")])
    assert result.exit_code == 2, result.output
    assert "--resume:" in result.output and "does not exist (mistyped --output?)" in result.output
    assert not (tmp_path / "typo").exists()
