"""Exports train and evaluate as they were made: every export kind finetunes a step; arch.json sets the input.

Kinds: a CNN with removed residual blocks and narrowed convs, a ViT with removed attention/MLP branches, a ViT
with Q != V attention. ``mdp eval``/``finetune`` read resolution, mean/std and class count from ``arch.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mdp_cli.cli import main
from mdp_cli.errors import MdpError
from mdp_cli.export.spec import load_exported, save_exported
from mdp_cli.models import create_model
from mdp_cli.train.engine import FinetuneConfig, evaluate, finetune, load_model
from train_helpers import needs_fashion_mnist

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]
TINY_DATA = "builtin:fashion-mnist?train=16&val=8"


def _cnn_export(directory: Path) -> Path:
    from mdp_cli.export.cnn_prune import prune_cnn
    from mdp_cli.space.cnn import analyze_cnn

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    analysis = analyze_cnn(model, "resnet18", (3, 32, 32))
    choice = {d.name: d.options[0] for d in analysis.space.dims}
    kept = {"layer1.1": False, "layer3.1": False}  # removed residual blocks (identity shortcuts remain)
    net, arch = prune_cnn(model, analysis, choice, kept)
    save_exported(directory, net, arch, source_model="resnet18", resolution=32)
    return directory


def _vit_export(directory: Path, choice: dict, kept: dict, num_classes: int = 10) -> Path:
    from mdp_cli.export.vit import export_vit

    torch.manual_seed(0)
    model = create_model("deit_tiny", img_size=32, num_classes=num_classes)
    pruned, arch = export_vit(model, choice, kept)
    save_exported(directory, pruned, arch, source_model="deit_tiny")
    return directory


EXPORTS = {
    "cnn_removed_blocks": _cnn_export,
    "vit_removed_branches": lambda d: _vit_export(d, {}, {"blocks.1.attn": False, "blocks.2.mlp": False,
                                                          "blocks.3.attn": False, "blocks.3.mlp": False}),
    "vit_q_ne_v": lambda d: _vit_export(d, {"blocks.0.attn.qk": 16, "blocks.0.attn.v": 48, "blocks.5.attn.qk": 40,
                                            "blocks.5.attn.v": 8, "blocks.5.attn.heads": 2}, {}),
}


@needs_fashion_mnist
@pytest.mark.parametrize("kind", sorted(EXPORTS))
def test_every_export_kind_finetunes_one_step(kind: str, tmp_path: Path) -> None:
    exported = EXPORTS[kind](tmp_path / "export")
    before = load_exported(exported).state_dict()
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=0.05, augment=False, amp="off")
    lines: list[str] = []
    row = finetune(str(exported), TINY_DATA, tmp_path / "run", cfg, progress=False, log=lines.append)
    assert row["step"] == 1 and row["train_loss"] > 0
    after = load_exported(tmp_path / "run" / "final").state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors were trained"
    assert "input 32x32 px" in lines[0] and "10 classes (arch.json)" in lines[0]
    # the finetuned export records the transform it was trained with
    arch = json.loads((tmp_path / "run" / "final" / "arch.json").read_text())
    assert arch["data_config"]["input_size"] == [3, 32, 32]


@needs_fashion_mnist
def test_eval_takes_resolution_and_normalisation_from_arch_json(tmp_path: Path) -> None:
    exported = _cnn_export(tmp_path / "export")
    lines: list[str] = []
    result = evaluate(str(exported), TINY_DATA, progress=False, log=lines.append)
    assert result["input"]["size"] == [32, 32]
    assert result["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert "arch.json input_shape" in result["input"]["from"]
    assert "input 32x32 px" in lines[0] and "sha256" in lines[0]
    assert evaluate(str(exported), TINY_DATA, img_size=48, progress=False)["input"]["size"] == [48, 48]
    vit = _vit_export(tmp_path / "vit", {}, {})
    assert evaluate(str(vit), TINY_DATA, progress=False)["input"]["size"] == [32, 32]
    with pytest.raises(MdpError, match="ViT exported at 32 px"):
        evaluate(str(vit), TINY_DATA, img_size=224, progress=False)


def test_export_timm_source_gets_its_own_normalisation(tmp_path: Path) -> None:
    from mdp_cli.train.exported import export_data_config

    config, source = export_data_config({"family": "x", "img_size": [64, 64], "in_chans": 3},
                                        {"source_model": "tf_efficientnet_lite0"})
    assert config["input_size"] == (3, 64, 64) and config["mean"] == (0.5, 0.5, 0.5)
    assert source == "size from arch.json img_size, mean/std from defaults of tf_efficientnet_lite0"


@needs_fashion_mnist
def test_new_class_count_replaces_an_exports_head(tmp_path: Path) -> None:
    exported = _vit_export(tmp_path / "export", {}, {"blocks.0.mlp": False})
    with pytest.raises(MdpError, match="has a 10-class head; drop --num-classes"):
        load_model(str(exported), num_classes=3)
    loaded = load_model(str(exported), num_classes=3, replace_head=True)
    assert loaded.notes == ["head replaced: 10 -> 3 classes (new head, random init)"]
    assert loaded.module(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    cnn = load_model(str(_cnn_export(tmp_path / "cnn")), num_classes=4, replace_head=True)
    x = torch.randn(2, 3, 32, 32)
    assert cnn.module(x).shape == (2, 4)
    save_exported(tmp_path / "cnn4", cnn.module, cnn.arch)  # the arch spec follows the new head
    torch.testing.assert_close(load_exported(tmp_path / "cnn4")(x), cnn.module(x), rtol=0, atol=0)
    runner = CliRunner()
    result = runner.invoke(main, ["finetune", str(exported), "--data", TINY_DATA, "-o", str(tmp_path / "ft"),
                                  "--epochs", "1", "--batch-size", "8", "--num-classes", "10", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "10 classes (arch.json)" in result.output
    # an ImageNet-sized export finetuned on 10 classes: new head, said so, saved with it
    imagenet = _vit_export(tmp_path / "e1000", {}, {"blocks.0.mlp": False}, num_classes=1000)
    result = runner.invoke(main, ["finetune", str(imagenet), "--data", TINY_DATA, "-o", str(tmp_path / "ft10"),
                                  "--epochs", "1", "--batch-size", "8", "--num-classes", "10", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "head replaced: 1000 -> 10 classes" in result.output
    assert json.loads((tmp_path / "ft10" / "final" / "arch.json").read_text())["num_classes"] == 10
    assert load_exported(tmp_path / "ft10" / "final")(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    result = runner.invoke(main, ["finetune", str(exported), "--data", TINY_DATA, "-o", str(tmp_path / "ft3"),
                                  "--epochs", "1", "--batch-size", "8", "--num-classes", "3", "--no-progress"])
    assert result.exit_code == 2 and result.output.splitlines()[-1].endswith("pass --num-classes 10 (finetune "
                                                                             "gives the model a new head of that size)")


def test_teacher_without_weights_is_refused(tmp_path: Path) -> None:
    cfg = FinetuneConfig(epochs=1, kd="soft", teacher="resnet50")
    with pytest.raises(MdpError, match="--teacher resnet50 has no weights"):
        finetune("resnet18", TINY_DATA, tmp_path / "run", cfg, progress=False, log=lambda _: None)


@needs_fashion_mnist
def test_dense_weights_saved_by_finetune_keep_their_transform(tmp_path: Path) -> None:
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=0.01, img_size=32, num_classes=10, augment=False, amp="off")
    finetune("resnet18", TINY_DATA, tmp_path / "run", cfg, progress=False, log=lambda _: None)
    weights = str(tmp_path / "run" / "final" / "model.safetensors")
    result = evaluate("resnet18", TINY_DATA, pretrained=weights, progress=False)  # no --img-size, no --num-classes
    assert result["input"]["size"] == [32, 32] and "model.json" in result["input"]["from"]
    assert "10 classes from the checkpoint" in result["weights"]
