"""Plain-PyTorch CNN rebuilt from a node list (family ``cnn_graph``): what an exported CNN loads into.

arch.json holds ``nodes``: ``[{"name", "op", "inputs": [names], "attrs": {...}}]`` in execution order
(ops: input, conv, bn, act, maxpool, avgpool, adaptive_avgpool, flatten, linear, add, output). Modules
with parameters are stored under their node name, so the safetensors keys are ``<node>.weight`` etc.
This module imports nothing from mdp's tracing or pruning code: a pruned model loads with torch and
safetensors only (plus this file).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mdp_cli.modules.registry import register_arch

FAMILY = "cnn_graph"
_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
         "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def make_module(op: str, attrs: dict[str, Any]) -> nn.Module | None:
    """The nn.Module that runs one node (None for ops done inline: input, add, flatten, output)."""
    if op == "conv":
        return nn.Conv2d(attrs["in_channels"], attrs["out_channels"], tuple(attrs["kernel_size"]),
                         stride=tuple(attrs["stride"]), padding=tuple(attrs["padding"]),
                         dilation=tuple(attrs["dilation"]), groups=attrs["groups"], bias=attrs["bias"])
    if op == "bn":
        return nn.BatchNorm2d(attrs["num_features"], eps=attrs["eps"], momentum=attrs["momentum"],
                              affine=attrs["affine"], track_running_stats=attrs["track_running_stats"])
    if op == "act":
        return _ACTS[attrs["kind"]](inplace=True) if attrs["kind"] in ("relu", "relu6") else _ACTS[attrs["kind"]]()
    if op == "maxpool":
        return nn.MaxPool2d(tuple(attrs["kernel_size"]), tuple(attrs["stride"]), tuple(attrs["padding"]),
                            tuple(attrs["dilation"]), ceil_mode=attrs["ceil_mode"])
    if op == "avgpool":
        return nn.AvgPool2d(tuple(attrs["kernel_size"]), tuple(attrs["stride"]), tuple(attrs["padding"]),
                            ceil_mode=attrs["ceil_mode"], count_include_pad=attrs["count_include_pad"])
    if op == "adaptive_avgpool":
        return nn.AdaptiveAvgPool2d(tuple(attrs["output_size"]))
    if op == "linear":
        return nn.Linear(attrs["in_features"], attrs["out_features"], bias=attrs["bias"])
    if op in ("input", "add", "flatten", "output"):
        return None
    raise ValueError(f"unknown op {op!r} in cnn_graph spec")


class GraphNet(nn.Module):
    """Runs a node list in order; each value is freed once its last user has run."""

    def __init__(self, nodes: list[dict[str, Any]]):
        super().__init__()
        self.nodes = [dict(n) for n in nodes]
        self.layers = nn.ModuleDict()
        for n in self.nodes:
            module = make_module(n["op"], n["attrs"])
            if module is not None:
                self.layers[n["name"]] = module
        last_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for name in n["inputs"]:
                last_use[name] = i
        self._free = [[name for name in dict.fromkeys(n["inputs"]) if last_use[name] == i]
                      for i, n in enumerate(self.nodes)]
        # The first input of an in-place activation must not be needed later (else the act runs out of place).
        for i, n in enumerate(self.nodes):
            feeds_on_input = any(m["name"] == n["inputs"][0] and m["op"] == "input" for m in self.nodes) if n["inputs"] else False
            if n["op"] == "act" and (n["inputs"][0] not in self._free[i] or feeds_on_input):
                self.layers[n["name"]] = make_module("act", {"kind": n["attrs"]["kind"]})
                if hasattr(self.layers[n["name"]], "inplace"):
                    self.layers[n["name"]].inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        out = None
        for n, free in zip(self.nodes, self._free):
            op, name = n["op"], n["name"]
            if op == "input":
                values[name] = x
                continue
            args = [values[i] for i in n["inputs"]]
            if op == "add":
                y = args[0] + args[1]
            elif op == "flatten":
                y = torch.flatten(args[0], n["attrs"]["start_dim"])
            elif op == "output":
                out = args[0]
                break
            else:
                y = self.layers[name](args[0])
            for f in free:
                del values[f]
            values[name] = y
        return out


# Keys of the state dict follow ``layers.<node>.<param>``: keep that stable, it is the file format.
@register_arch(FAMILY)
def build_graphnet(arch: dict[str, Any]) -> nn.Module:
    return GraphNet(arch["nodes"])
