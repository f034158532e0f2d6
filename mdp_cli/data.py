"""Image data for every stage that reads images (score, eval, finetune): one spec string, one loader.

A *data spec* is either

- a directory tree ``DIR/{train,val}/CLASS/IMAGE`` (torchvision ImageFolder layout), or
- ``builtin:NAME`` with optional subset sizes, e.g. ``builtin:fashion-mnist?train=2000&val=500``:
  real image data that is installed by the project's set-up and read directly, with no download.

Built-in data sets:

``fashion-mnist``
    Zalando's Fashion-MNIST (60,000 train + 10,000 test 28x28 grayscale images, 10 classes, MIT licence),
    as the original IDX files of the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``; ``MDP_FASHION_MNIST_DIR`` overrides the location).
    Split ``val`` is the official test set. Images are converted to 3-channel RGB.

``digits``
    The UCI hand-written digits bundled with scikit-learn (``sklearn.datasets.load_digits``: 1,797 8x8
    grayscale images, 10 classes; CC BY 4.0), a small pip-only fallback where apt is not available.
    Fixed split: in each class every fifth image is ``val`` (1,442 train, 355 val).

Transforms are timm's (``timm.data.create_transform``) for the model's input size and normalisation, as
resolved from the model's ``pretrained_cfg`` (ImageNet defaults when it has none); ``img_size`` overrides
the resolution. Subsets (``?train=N``, ``limit=N``) are a fixed pseudo-random choice (seed 0) so that the
classes stay mixed, the same in every process and every run.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import parse_qsl

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mdp_cli.errors import MdpError

SPLITS = ("train", "val")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --------------------------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: a directory, or a built-in data set with optional per-split sizes."""

    kind: str  # "folder" or "builtin"
    location: str  # directory path, or built-in name
    sizes: tuple[tuple[str, int], ...] = ()

    def size(self, split: str) -> int | None:
        return dict(self.sizes).get(split)

    def __str__(self) -> str:
        if self.kind == "folder":
            return self.location
        query = "&".join(f"{k}={v}" for k, v in self.sizes)
        return f"builtin:{self.location}" + (f"?{query}" if query else "")


def parse_spec(spec: str | os.PathLike | DataSpec) -> DataSpec:
    if isinstance(spec, DataSpec):
        return spec
    text = str(spec)
    if not text.startswith("builtin:"):
        return DataSpec("folder", text)
    name, _, query = text[len("builtin:"):].partition("?")
    if name not in BUILTINS:
        raise MdpError(f"--data {text}: unknown built-in data set {name!r} (known: {', '.join(sorted(BUILTINS))})")
    sizes = []
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in SPLITS:
            raise MdpError(f"--data {text}: unknown option {key!r} (use train=N and/or val=N)")
        if not value.isdigit() or int(value) < 1:
            raise MdpError(f"--data {text}: {key}={value!r} must be a positive integer")
        sizes.append((key, int(value)))
    return DataSpec("builtin", name, tuple(sizes))


# --------------------------------------------------------------------------------------------- datasets

class ArrayImages(Dataset):
    """Images held in a uint8 array (N, H, W) or (N, H, W, 3) with integer labels; yields RGB PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], transform: Callable | None):
        self.images, self.targets, self.classes, self.transform = images, labels, list(classes), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class SubsetWithClasses(torch.utils.data.Subset):
    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def targets(self) -> list[int]:
        targets = self.dataset.targets
        return [int(targets[i]) for i in self.indices]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise MdpError(f"{path}: not an IDX file (magic {found}, expected {magic})")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(os.environ.get("MDP_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    image_file, label_file = (root / name for name in FASHION_MNIST_FILES[split])
    if not image_file.is_file() or not label_file.is_file():
        raise MdpError(
            f"builtin:fashion-mnist: {image_file} not found; install the Debian package "
            f"'dataset-fashion-mnist' (run 'make setup' as root, or 'apt-get install dataset-fashion-mnist'), "
            f"or point MDP_FASHION_MNIST_DIR at a directory with the four IDX .gz files"
        )
    return _read_idx(image_file, 2051), _read_idx(label_file, 2049)


def _fashion_mnist(split: str, transform: Callable | None) -> Dataset:
    images, labels = _fashion_mnist_arrays(split)
    return ArrayImages(images, labels, FASHION_MNIST_CLASSES, transform)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MdpError("builtin:digits needs scikit-learn: pip install scikit-learn (or 'make setup')") from None
    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    # Fixed split: within each class, every fifth image (in file order) is validation.
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for digit in range(10):
        where = np.flatnonzero(labels == digit)
        rank_in_class[where] = np.arange(len(where))
    return images, labels, rank_in_class % 5 == 4


def _digits(split: str, transform: Callable | None) -> Dataset:
    images, labels, is_val = _digits_arrays()
    keep = is_val if split == "val" else ~is_val
    return ArrayImages(images[keep], labels[keep], [str(d) for d in range(10)], transform)


BUILTINS: dict[str, Callable[[str, Callable | None], Dataset]] = {"fashion-mnist": _fashion_mnist, "digits": _digits}


def read_image(path: str):
    """An RGB PIL image, fully decoded now, so that a corrupt or truncated file is one error naming it
    (PIL decodes lazily and would fail later with a traceback from inside the loader)."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MdpError(f"{path}: not a readable image ({reason}); the file is corrupt or truncated: "
                       "remove or replace it") from None


def _image_folder(root: str, split: str, transform: Callable | None) -> Dataset:
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not base.is_dir():
        raise MdpError(f"--data {root}: no such directory (expected {root}/train/CLASS/*.jpg and {root}/val/...)")
    directory = base / split
    if not directory.is_dir():
        present = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise MdpError(
            f"--data {root}: no '{split}' split directory (expected {root}/{split}/CLASS/IMAGE; "
            f"found subdirectories {present or 'none'})"
        )
    if not any(p.is_dir() for p in directory.iterdir()):
        raise MdpError(f"--data {root}: split '{split}' has no class subdirectories ({directory}/CLASS/IMAGE)")
    try:
        return ImageFolder(str(directory), transform=transform, loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise MdpError(f"--data {root}: split '{split}': {exc}".replace("\n", " ")) from None


def subset_indices(total: int, size: int | None) -> list[int] | None:
    """A fixed pseudo-random subset of ``size`` indices (sorted), or None for all of them."""
    if size is None or size >= total:
        return None
    generator = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(total, generator=generator)[:size].tolist())


def make_dataset(spec: str | DataSpec, split: str, transform: Callable | None = None,
                 limit: int | None = None) -> Dataset:
    """The dataset of one split; ``limit`` (or the spec's ``split=N``) takes a fixed subset."""
    if split not in SPLITS:
        raise MdpError(f"unknown split {split!r} (use {' or '.join(SPLITS)})")
    spec = parse_spec(spec)
    if spec.kind == "builtin":
        dataset = BUILTINS[spec.location](split, transform)
    else:
        dataset = _image_folder(spec.location, split, transform)
    sizes = [s for s in (spec.size(split), limit) if s is not None]
    indices = subset_indices(len(dataset), min(sizes) if sizes else None)
    if indices is not None:
        dataset = SubsetWithClasses(dataset, indices)
    if len(dataset) == 0:
        raise MdpError(f"--data {spec}: split '{split}' holds no images")
    return dataset


def num_classes(spec: str | DataSpec, split: str = "train") -> int:
    return len(make_dataset(spec, split).classes)


# --------------------------------------------------------------------------------------------- transforms

def data_config(model: torch.nn.Module | None = None, img_size: int | None = None) -> dict[str, Any]:
    """Input size, mean, std, interpolation and crop fraction for ``model`` (timm's resolution rules)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model) if model is not None else resolve_data_config(pretrained_cfg={"input_size": (3, 224, 224)})
    arch_cfg = getattr(model, "mdp_data_config", None)  # exported models may carry their own
    if isinstance(arch_cfg, dict):
        config.update({k: v for k, v in arch_cfg.items() if k in config})
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], int(img_size), int(img_size))
    return config


def make_transform(config: dict[str, Any], train: bool, augment: bool = True) -> Callable:
    """timm's train transform (random resized crop, flip) when ``train and augment``; else its eval transform."""
    from timm.data import create_transform

    return create_transform(**config, is_training=bool(train and augment))


# --------------------------------------------------------------------------------------------- loaders

class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` reads indices r, r+w, ...: every image once across ranks, no padding (for eval)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(spec: str | DataSpec, split: str, model: torch.nn.Module | None = None, *,
                batch_size: int = 64, train: bool = False, augment: bool = True, img_size: int | None = None,
                config: dict[str, Any] | None = None, limit: int | None = None, num_workers: int = 0,
                seed: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A loader over one split, with the model's transforms.

    ``train=True``: shuffled with a ``DistributedSampler`` (also for one process, so that one process and N
    processes see the same global batches), seeded by ``seed``; call ``loader.sampler.set_epoch(e)`` each
    epoch; incomplete last batches are dropped. ``batch_size`` is per process. ``train=False``: fixed
    order, each rank reads a disjoint shard. ``mdp score`` calls this with ``train=False`` (or
    ``train=True, augment=False`` to sample shuffled batches).
    """
    from torch.utils.data.distributed import DistributedSampler

    config = config or data_config(model, img_size)
    dataset = make_dataset(spec, split, make_transform(config, train, augment), limit)
    generator = torch.Generator().manual_seed(seed)
    classes = getattr(dataset, "classes", None)
    if train and classes is not None and len(classes) < 2:
        # one class: every prediction is right, so training learns nothing and accuracy reads 100 %
        raise MdpError(f"--data {spec}: split '{split}' holds one class only ({', '.join(map(str, classes))}); "
                       "training needs images of at least two classes (one sub-folder per class)")
    if train:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=seed, drop_last=True)
        if len(sampler) < batch_size:
            raise MdpError(
                f"--data {spec}: split '{split}' has {len(dataset)} images, fewer than one batch of "
                f"{batch_size} x {world_size} process(es); lower --batch-size"
            )
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=num_workers,
                      generator=generator, persistent_workers=False, pin_memory=torch.cuda.is_available())
