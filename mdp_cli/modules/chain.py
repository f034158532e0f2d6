"""A chain of copies of an op that takes several inputs (add, mul, gating): what latency profiling times.

Each copy after the first takes the previous copy's output in place of the input of the same shape, and the
other inputs unchanged, so that every call finds its main input just produced, as it does inside a network.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class MultiInputChain(nn.Module):
    def __init__(self, modules: Sequence[nn.Module], example: Sequence[torch.Tensor]):
        super().__init__()
        self.links = nn.ModuleList(modules)
        out = modules[0](tuple(example))
        same = [k for k, t in enumerate(example) if t.shape == out.shape]
        if not same:
            raise ValueError("a chain needs an input of the output's shape")
        self.carry = same[0]  # the input position the previous output takes

    def forward(self, inputs: Any) -> torch.Tensor:
        inputs = list(inputs)
        out = self.links[0](tuple(inputs))
        for link in self.links[1:]:
            inputs[self.carry] = out
            out = link(tuple(inputs))
        return out
