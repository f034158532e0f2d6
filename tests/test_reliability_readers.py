"""Readers refuse bad files in one line: all-zero importance, corrupt images, missing checkpoints, deep JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mdp_cli.artifacts import read_json
from mdp_cli.cli import one_line
from mdp_cli.data import make_loader
from mdp_cli.errors import MdpError
from mdp_cli.importance.taylor import read_importance, write_importance
from mdp_cli.train.checkpoint import POINTER, read_checkpoint, require_checkpoint


def record(scores: list[float], options: list[int]) -> dict:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    cum = [float(sum(sorted(scores, reverse=True)[:o])) for o in options]
    return {"scores": scores, "step": 1, "options": options, "align": 1, "order": order, "cumulative": cum,
            "base": cum, "block": None, "gated": {}}


def test_all_zero_importance_is_refused_on_write_and_read(tmp_path):
    zero = {"a": record([0.0] * 4, [2, 4]), "b": record([0.0] * 2, [1, 2])}
    out = tmp_path / "importance.json"
    with pytest.raises(MdpError, match="every importance score is zero") as err:
        write_importance(out, "m", zero)
    assert not out.exists() and "\n" not in str(err.value)
    out.write_text(json.dumps({"schema": "mdp.importance", "version": 1, "model": "m", "dims": zero}))
    with pytest.raises(MdpError, match=f"{out}: every importance score is zero"):
        read_importance(out)
    # one dim at zero (a zero-initialised residual BN) is legitimate: only nothing-to-rank is refused
    write_importance(out, "m", {"a": record([0.0] * 4, [2, 4]), "b": record([1.0, 2.0], [1, 2])})
    assert read_importance(out)["dims"]["b"]["cumulative"] == [2.0, 3.0]


@pytest.mark.parametrize("order", [[0, 0, 1, 2], [0, 1, 2], [0, 1, 2, "3"]])
def test_importance_order_must_rank_every_unit_once(tmp_path, order):
    rec = record([4.0, 3.0, 2.0, 1.0], [2, 4])
    rec["order"] = order
    out = tmp_path / "importance.json"
    out.write_text(json.dumps({"schema": "mdp.importance", "version": 1, "model": "m", "dims": {"a": rec}}))
    with pytest.raises(MdpError, match=r"dims.a.order must rank each unit once"):
        read_importance(out)


def image_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / split / cls / f"{k}.jpg")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_images_are_one_line_errors_naming_the_file(tmp_path, damage, workers):
    image_tree(tmp_path)
    bad = tmp_path / "val" / "dog" / "1.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an image at all" * 10, "empty": b""}[damage])
    loader = make_loader(tmp_path, "val", batch_size=6, img_size=16, num_workers=workers)
    with pytest.raises(MdpError) as err:
        list(loader)
    message = one_line(str(err.value))  # what the CLI prints (a worker's error arrives wrapped)
    assert message.startswith(f"{bad}: not a readable image (") and message.endswith(
        "the file is corrupt or truncated: remove or replace it")


def test_resume_refuses_a_missing_or_empty_run_directory(tmp_path):
    with pytest.raises(MdpError, match="does not exist \\(mistyped --output\\?\\)"):
        require_checkpoint(tmp_path / "ruN")
    with pytest.raises(MdpError, match="holds no checkpoint"):
        require_checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(MdpError, match="is a file, not a run directory"):
        read_checkpoint(tmp_path / "file")
    (tmp_path / POINTER).write_text(json.dumps({"schema": "mdp.checkpoint", "version": 1, "epoch": 1}))
    with pytest.raises(MdpError, match="lacks 'tensors'"):
        read_checkpoint(tmp_path)


def test_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 20_000 + "]" * 20_000)
    with pytest.raises(MdpError, match="nested too deeply"):
        read_json(path, "mdp.problem", 1)


def test_training_data_of_one_class_is_refused(tmp_path):
    import shutil

    image_tree(tmp_path)
    shutil.rmtree(tmp_path / "train" / "dog")
    with pytest.raises(MdpError, match=r"split 'train' holds one class only \(cat\); training needs images of at "
                                       r"least two classes"):
        make_loader(tmp_path, "train", batch_size=2, train=True, img_size=16)
    assert len(list(make_loader(tmp_path, "val", batch_size=2, img_size=16))) == 3  # evaluation may read it


def test_eval_and_finetune_on_a_missing_gpu_are_one_line():
    import torch
    from click.testing import CliRunner

    from mdp_cli.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for command in (["eval", "resnet18"], ["finetune", "resnet18", "-o", "unused"]):
        result = CliRunner().invoke(main, [*command[:2], "--data", "builtin:digits", "--device", "cuda",
                                           *command[2:]])
        lines = [line for line in result.output.splitlines() if line.startswith("mdp:")]
        assert result.exit_code == 2 and lines == [
            "mdp: error: --device cuda: CUDA is not available on this machine; use --device cpu (or auto)"], result.output
