"""The shared data pipeline: specs, the built-in Fashion-MNIST, ImageFolder trees, loaders, errors; mdp eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mdp_cli.cli import main
from mdp_cli.data import data_config, make_dataset, make_loader, parse_spec
from mdp_cli.errors import MdpError
from train_helpers import needs_fashion_mnist


def _image_tree(root: Path, per_class: int = 6, classes=("cat", "dog")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_spec_parsing() -> None:
    spec = parse_spec("builtin:fashion-mnist?train=2000&val=500")
    assert (spec.kind, spec.location, spec.size("train"), spec.size("val")) == ("builtin", "fashion-mnist", 2000, 500)
    assert str(spec) == "builtin:fashion-mnist?train=2000&val=500"
    assert parse_spec("/data/imagenet").kind == "folder"
    for bad, message in [("builtin:cifar", "unknown built-in"), ("builtin:fashion-mnist?train=x", "positive integer"),
                         ("builtin:fashion-mnist?test=5", "unknown option")]:
        with pytest.raises(MdpError, match=message):
            parse_spec(bad)


@needs_fashion_mnist
def test_builtin_fashion_mnist_is_the_real_data_set() -> None:
    train, val = make_dataset("builtin:fashion-mnist", "train"), make_dataset("builtin:fashion-mnist", "val")
    assert (len(train), len(val)) == (60000, 10000)
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    image, label = val[0]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 9  # the first test image is an ankle boot
    counts = np.bincount(np.asarray(train.targets), minlength=10)
    assert (counts == 6000).all()


@needs_fashion_mnist
def test_subsets_are_fixed_and_mixed() -> None:
    a = make_dataset("builtin:fashion-mnist?train=500", "train")
    b = make_dataset("builtin:fashion-mnist", "train", limit=500)
    assert len(a) == 500 and a.indices == b.indices
    assert len(set(a.targets)) == 10


def test_builtin_digits_fallback() -> None:
    pytest.importorskip("sklearn")
    train, val = make_dataset("builtin:digits", "train"), make_dataset("builtin:digits", "val")
    assert (len(train), len(val)) == (1442, 355) and train.classes == [str(d) for d in range(10)]
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 0
    loader = make_loader("builtin:digits?train=256", "train", config=data_config(None, img_size=16), batch_size=32,
                         train=True)
    images, labels = next(iter(loader))
    assert images.shape == (32, 3, 16, 16) and len(loader) == 8


def test_missing_builtin_files_name_the_package(monkeypatch, tmp_path: Path) -> None:
    import mdp_cli.data as data

    data._fashion_mnist_arrays.cache_clear()
    monkeypatch.setenv("MDP_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(MdpError, match="apt-get install dataset-fashion-mnist"):
        make_dataset("builtin:fashion-mnist", "val")
    data._fashion_mnist_arrays.cache_clear()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MdpError, match="no such directory"):
        make_dataset(tmp_path / "absent", "train")
    (tmp_path / "a" / "train").mkdir(parents=True)
    with pytest.raises(MdpError, match="no 'val' split"):
        make_dataset(tmp_path / "a", "val")
    with pytest.raises(MdpError, match="no class subdirectories"):
        make_dataset(tmp_path / "a", "train")
    (tmp_path / "a" / "train" / "cat").mkdir()
    with pytest.raises(MdpError, match="split 'train'"):
        make_dataset(tmp_path / "a", "train")


def test_loaders_use_model_resolution_and_shard(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "imgs")
    config = data_config(None, img_size=32)
    assert config["input_size"] == (3, 32, 32)
    images, labels = next(iter(make_loader(root, "val", config=config, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 0, 0]
    seen = []
    for rank in range(2):
        loader = make_loader(root, "val", config=config, batch_size=5, rank=rank, world_size=2)
        seen += list(loader.sampler)
    assert sorted(seen) == list(range(12))
    # training: the global batch of step s is the same set of images for 1 and for 2 processes
    one = make_loader(root, "train", config=config, batch_size=4, train=True, seed=3)
    two = [make_loader(root, "train", config=config, batch_size=2, train=True, seed=3, rank=r, world_size=2)
           for r in range(2)]
    for loader in [one, *two]:
        loader.sampler.set_epoch(1)
    order = list(one.sampler)
    shards = [list(loader.sampler) for loader in two]
    for step in range(len(one)):
        assert sorted(order[4 * step: 4 * step + 4]) == sorted(shards[0][2 * step: 2 * step + 2] + shards[1][2 * step: 2 * step + 2])
    with pytest.raises(MdpError, match="fewer than one batch"):
        make_loader(root, "train", config=config, batch_size=64, train=True)


@needs_fashion_mnist
def test_eval_dense_model_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", "test_resnet", "--num-classes", "10", "--img-size", "32", "--data",
                                  "builtin:fashion-mnist?val=96", "--batch-size", "32", "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["schema"] == "mdp.eval" and metrics["images"] == 96
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and metrics["images_per_s"] > 0
    assert "top1" in result.output


@needs_fashion_mnist
def test_eval_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "test_resnet", "--img-size", "32", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and result.output.startswith("mdp: error: --data") and result.output.count("\n") == 1
    result = runner.invoke(main, ["eval", "test_resnet", "--num-classes", "4", "--img-size", "32",
                                  "--data", "builtin:fashion-mnist?val=8", "--no-progress"])
    assert result.exit_code == 2 and "--num-classes 10" in result.output
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pt")
    result = runner.invoke(main, ["eval", "test_resnet", "--num-classes", "10", "--pretrained", str(tmp_path / "w.pt"),
                                  "--data", "builtin:fashion-mnist?val=8"])
    assert result.exit_code == 2 and "does not fit test_resnet: 77 model tensors missing" in result.output
    assert result.output.count("\n") == 1
