"""Latency op builders for CNN terms: each runs exactly the modules the exported GraphNet runs.

Sizes come by role: ``cin``/``cout`` for a dense conv or linear, ``c`` for a conv whose input and output share
one dim (depthwise / grouped by ``group_size``, or a dense conv tied by a residual) and for every other op
(bn, act, scalar, pools, mean, LayerNorm, layer scale, permute, add, mul: squeeze-and-excitation's gate
multiply). A width in the context is a fixed int, the name of another role (the same dim), or a list of
roles and ints whose sum is the width (a concatenation: DenseNet/SqueezeNet/GhostNet); ``cat`` has one role
per input (``c0``, ``c1``, ...). Where the input is not an NCHW map the context holds its ``shape`` (batch
left out, channel entry 0) and channel ``axis``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mdp_cli.latency.ops import register_op
from mdp_cli.modules.cnn import NodeOp, make_module


def width(context: dict[str, Any], sizes: dict[str, int], role: str) -> int:
    """A role's width: its size, or the fixed size / other role / sum of parts the context gives for it."""
    if role in sizes:
        return int(sizes[role])
    value = context[role]
    if isinstance(value, str):
        return int(sizes[value])
    if isinstance(value, list):
        return sum(int(sizes[p]) if isinstance(p, str) else int(p) for p in value)
    return int(value)


def _x(batch: int, channels: int, context: dict[str, Any]) -> torch.Tensor:
    if "hw" in context:
        hw = context["hw"]
        return torch.randn(batch, channels, hw[0], hw[1])
    shape = list(context["shape"])
    shape[context["axis"] - 1] = channels * context.get("repeat", 1)
    return torch.randn(batch, *shape)


@register_op("conv_bn_act")
def conv_bn_act(context: dict[str, Any], sizes: dict[str, int], batch: int):
    if "c" in sizes or "c" in context:
        c = width(context, sizes, "c")
        cin = cout = c
        groups = c // context["group_size"] if context["mode"] == "grouped" else 1
    else:
        cin, cout = width(context, sizes, "cin"), width(context, sizes, "cout")
        groups = context.get("groups", 1) if context["mode"] == "grouped" else 1
    layers = [make_module("conv", {"in_channels": cin, "out_channels": cout, "kernel_size": context["k"],
                                   "stride": context["stride"], "padding": context["padding"],
                                   "dilation": context["dilation"], "groups": groups, "bias": context["bias"],
                                   "pad": context.get("pad")})]
    if context["bn"]:
        layers.append(nn.BatchNorm2d(cout))
    if context["act"]:
        layers.append(make_module("act", {"kind": context["act"]}))
    return nn.Sequential(*layers).eval(), _x(batch, cin, context)


@register_op("linear")
def linear(context: dict[str, Any], sizes: dict[str, int], batch: int):
    cin = width(context, sizes, "cin") * int(context.get("cin_mult", 1))
    module = nn.Linear(cin, width(context, sizes, "cout"), bias=context["bias"]).eval()
    rows = int(context.get("rows", 1))
    return module, (torch.randn(batch, rows, cin) if rows > 1 else torch.randn(batch, cin))


@register_op("add")
def add(context: dict[str, Any], sizes: dict[str, int], batch: int):
    c = width(context, sizes, "c")
    return NodeOp("add", {}).eval(), (_x(batch, c, context), _x(batch, c, context))


@register_op("mul")
def mul(context: dict[str, Any], sizes: dict[str, int], batch: int):
    """Elementwise product, or a per-channel gate (SE/ECA: the map times a [N, C, 1, 1] tensor)."""
    c = width(context, sizes, "c")
    x, other = _x(batch, c, context), _x(batch, c, context)
    if "gate" in context:
        gate = torch.rand(batch, c, 1, 1)
        x, other = (gate, x) if context["gate"] == 0 else (x, gate)
    return NodeOp("mul", {}).eval(), (x, other)


@register_op("cat")
def cat(context: dict[str, Any], sizes: dict[str, int], batch: int):
    parts = [_x(batch, width(context, sizes, f"c{k}"), context) for k in range(int(context["parts"]))]
    dim = 1 if "hw" in context else context["axis"]
    return NodeOp("cat", {"dim": dim}).eval(), tuple(parts)


class _Flat(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flatten(self.inner(x), 1)


def _channel_op(op: str):
    """Ops over one channel space: the node's own attributes, with its channel-sized ones set to ``c``."""

    def build(context: dict[str, Any], sizes: dict[str, int], batch: int):
        c = width(context, sizes, "c")
        attrs = dict(context, num_features=c, momentum=0.1, track_running_stats=True, normalized_shape=[c])
        x = _x(batch, c, context)
        if op == "scale":
            shape = [1] * (x.dim() - 1)
            axis = 1 if "hw" in context else context["axis"]
            shape[axis - 1] = c
            attrs["param_shape"] = shape
        module = NodeOp(op, attrs)
        if op == "adaptive_avgpool" and context.get("output_size") == [1, 1]:
            module = _Flat(module)  # the flatten after the global pool runs with it
        return module.eval(), x

    return build


for _op in ("bn", "act", "scalar", "maxpool", "avgpool", "adaptive_avgpool", "mean", "ln2d", "layernorm", "scale",
            "permute"):
    register_op(_op)(_channel_op(_op))
