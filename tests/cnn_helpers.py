"""Small models and helpers shared by the CNN tests."""

from __future__ import annotations

import random

import torch
from torch import nn


class TinyBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return torch.relu(y + s)


class UserResNet(nn.Module):
    """A user's own residual CNN (not from any library): stem, 2 stages of 2 blocks, a depthwise conv, head."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(TinyBlock(width, width), TinyBlock(width, width))
        self.stage2 = nn.Sequential(TinyBlock(width, 2 * width, 2), TinyBlock(2 * width, 2 * width))
        self.expand = nn.Conv2d(2 * width, 4 * width, 1)
        self.dw = nn.Conv2d(4 * width, 4 * width, 3, padding=1, groups=4 * width)
        self.bn = nn.BatchNorm2d(4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        x = nn.functional.relu6(self.bn(self.dw(self.expand(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def random_solution(analysis, rng: random.Random, keep_prob: float = 0.7):
    choice = {d.name: rng.choice(d.options) for d in analysis.space.dims}
    kept = {b.name: rng.random() < keep_prob for b in analysis.blocks if b.removable}
    return choice, kept


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so that channel slicing errors show up in outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
