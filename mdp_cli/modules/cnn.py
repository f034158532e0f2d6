"""Plain-PyTorch CNN rebuilt from a node list (family ``cnn_graph``): what an exported CNN loads into.

arch.json holds ``nodes``: ``[{"name", "op", "inputs": [names], "attrs": {...}}]`` in execution order
(ops: input, conv, bn, act, scalar, maxpool, avgpool, adaptive_avgpool, mean, flatten, linear, layernorm,
ln2d, scale, add, mul, cat, permute, output). Modules with parameters are stored under their node name, so
the safetensors keys are ``layers.<node>.weight`` etc. This module imports nothing from mdp's tracing or
pruning code: a pruned model loads with torch and safetensors only (plus this file).

No op runs in place: a removed residual block leaves its skip input feeding the next op directly, and an
in-place activation there would overwrite a value autograd still needs (finetuning would fail).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mdp_cli.modules.registry import register_arch

FAMILY = "cnn_graph"
_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish,
         "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "mish": nn.Mish,
         "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "leaky_relu": nn.LeakyReLU}
# Ops computed inline in forward (no module, no parameters).
INLINE_OPS = ("input", "output", "add", "mul", "cat", "flatten", "mean", "permute", "scalar")


class PaddedConv2d(nn.Conv2d):
    """A conv with explicit (possibly asymmetric) zero padding first: TF "same" padding at a fixed input size."""

    def __init__(self, *args: Any, pad: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pad = [int(p) for p in pad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map (ConvNeXt's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Scale(nn.Module):
    """Multiply by a parameter broadcast over the other axes (layer-scale gamma)."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def make_module(op: str, attrs: dict[str, Any]) -> nn.Module | None:
    """The nn.Module that runs one node (None for ops computed inline, see ``INLINE_OPS``)."""
    if op == "conv":
        args = (attrs["in_channels"], attrs["out_channels"], tuple(attrs["kernel_size"]))
        kwargs = dict(stride=tuple(attrs["stride"]), padding=tuple(attrs["padding"]),
                      dilation=tuple(attrs["dilation"]), groups=attrs["groups"], bias=attrs["bias"])
        if attrs.get("pad"):
            return PaddedConv2d(*args, pad=attrs["pad"], **kwargs)
        return nn.Conv2d(*args, **kwargs)
    if op == "bn":
        return nn.BatchNorm2d(attrs["num_features"], eps=attrs["eps"], momentum=attrs["momentum"],
                              affine=attrs["affine"], track_running_stats=attrs["track_running_stats"])
    if op == "act":
        return _ACTS[attrs["kind"]]()  # never in place (see the module docstring)
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
    if op in ("layernorm", "ln2d"):
        cls = ChannelLayerNorm if op == "ln2d" else nn.LayerNorm
        return cls(attrs["normalized_shape"], eps=attrs["eps"], elementwise_affine=attrs["affine"],
                   bias=attrs.get("bias", True))
    if op == "scale":
        return Scale(attrs["param_shape"])
    if op in INLINE_OPS:
        return None
    raise ValueError(f"unknown op {op!r} in cnn_graph spec")


def _scalar(x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
    fn = attrs["fn"]
    if fn == "clamp":
        return torch.clamp(x, attrs.get("min"), attrs.get("max"))
    v = attrs["value"]
    return {"add": lambda: x + v, "sub": lambda: x - v, "rsub": lambda: v - x, "mul": lambda: x * v,
            "div": lambda: x / v}[fn]()


def apply_node(op: str, attrs: dict[str, Any], layer: nn.Module | None, args: list[torch.Tensor]) -> torch.Tensor:
    """Run one node on its input values (``layer`` from ``make_module``)."""
    if layer is not None:
        return layer(args[0])
    if op == "add":
        return args[0] + args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "cat":
        return torch.cat(args, attrs["dim"])
    if op == "flatten":
        return torch.flatten(args[0], attrs["start_dim"])
    if op == "mean":
        return args[0].mean(attrs["dims"], keepdim=attrs["keepdim"])
    if op == "permute":
        return args[0].permute(*attrs["dims"])
    if op == "scalar":
        return _scalar(args[0], attrs)
    raise ValueError(f"op {op!r} has no inline form")


class NodeOp(nn.Module):
    """One node as a module of its inputs: what latency profiling times for an op outside a fused conv group."""

    def __init__(self, op: str, attrs: dict[str, Any]):
        super().__init__()
        self.op, self.attrs = op, attrs
        self.layer = make_module(op, attrs)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = tuple(args[0])
        return apply_node(self.op, self.attrs, self.layer, list(args))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        out = None
        for n, free in zip(self.nodes, self._free):
            op, name = n["op"], n["name"]
            if op == "input":
                values[name] = x
                continue
            args = [values[i] for i in n["inputs"]]
            if op == "output":
                out = args[0]
                break
            y = apply_node(op, n["attrs"], self.layers[name] if name in self.layers else None, args)
            for f in free:
                del values[f]
            values[name] = y
        return out


# Keys of the state dict follow ``layers.<node>.<param>``: keep that stable, it is the file format.
@register_arch(FAMILY)
def build_graphnet(arch: dict[str, Any]) -> nn.Module:
    return GraphNet(arch["nodes"])
