"""Shared by the train-stage tests: a tiny exportable CNN family and a channel pruner for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from mdp_cli.export.spec import save_exported
from mdp_cli.modules.registry import register_arch

ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = "builtin:fashion-mnist?train=2048&val=512"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def mdp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mdp_cli", *args]


class TinyCNN(nn.Module):
    """conv-bn-relu x3 (strides 1, 2, 2), global pool, linear: widths are the pruned dimensions."""

    def __init__(self, widths: list[int], num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for width, stride in zip(widths, (1, 2, 2)):
            layers += [nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@register_arch("test_tiny_cnn")
def build_tiny_cnn(arch: dict) -> nn.Module:
    return TinyCNN(arch["widths"], arch["num_classes"])


def export_tiny(directory: Path, model: TinyCNN) -> None:
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    save_exported(directory, model, {"family": "test_tiny_cnn", "widths": widths, "num_classes": model.fc.out_features})


@torch.no_grad()
def prune_tiny(model: TinyCNN, keep: float) -> TinyCNN:
    """Keep the output channels with the largest L1 norm in each conv (and the matching BN, next inputs)."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    kept = [conv.weight.abs().sum(dim=(1, 2, 3)).argsort(descending=True)[: max(1, int(conv.out_channels * keep))]
            .sort().values for conv in convs]
    pruned = TinyCNN([len(k) for k in kept], model.fc.out_features)
    new_convs = [m for m in pruned.features if isinstance(m, nn.Conv2d)]
    new_bns = [m for m in pruned.features if isinstance(m, nn.BatchNorm2d)]
    previous = torch.arange(3)
    for conv, bn, new_conv, new_bn, k in zip(convs, bns, new_convs, new_bns, kept):
        new_conv.weight.copy_(conv.weight[k][:, previous])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[k])
        previous = k
    pruned.fc.weight.copy_(model.fc.weight[:, previous])
    pruned.fc.bias.copy_(model.fc.bias)
    return pruned.eval()


FASHION_MNIST_MISSING = not Path(os.environ.get("MDP_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"),
                                 "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = __import__("pytest").mark.skipif(
    FASHION_MNIST_MISSING, reason="builtin:fashion-mnist not installed (make setup, or apt-get install dataset-fashion-mnist)")
