"""Latency op builders for CNN terms: each runs exactly the modules the exported GraphNet runs.

Sizes come by role: ``cin``/``cout`` for a dense conv, ``c`` for a conv whose input and output share one
dim (depthwise / grouped by ``group_size``, or a dense conv tied by a residual) and for pass-through ops
(bn, act, add, pools). Fixed sizes of a term sit in its context under the same role names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mdp_cli.modules.cnn import make_module
from mdp_cli.latency.ops import register_op


def _get(context: dict[str, Any], sizes: dict[str, int], role: str) -> int:
    return int(sizes[role]) if role in sizes else int(context[role])


def _x(batch: int, channels: int, hw: list[int]) -> torch.Tensor:
    return torch.randn(batch, channels, hw[0], hw[1])


@register_op("conv_bn_act")
def conv_bn_act(context: dict[str, Any], sizes: dict[str, int], batch: int):
    if "c" in sizes or "c" in context:
        c = _get(context, sizes, "c")
        cin = cout = c
        groups = c // context["group_size"] if context["mode"] == "grouped" else 1
    else:
        cin, cout = _get(context, sizes, "cin"), _get(context, sizes, "cout")
        groups = context.get("groups", 1) if context["mode"] == "grouped" else 1
    layers = [make_module("conv", {"in_channels": cin, "out_channels": cout, "kernel_size": context["k"],
                                   "stride": context["stride"], "padding": context["padding"],
                                   "dilation": context["dilation"], "groups": groups, "bias": context["bias"]})]
    if context["bn"]:
        layers.append(nn.BatchNorm2d(cout))
    if context["act"]:
        layers.append(make_module("act", {"kind": context["act"]}))
    return nn.Sequential(*layers).eval(), _x(batch, cin, context["hw"])


@register_op("linear")
def linear(context: dict[str, Any], sizes: dict[str, int], batch: int):
    cin = _get(context, sizes, "cin")
    module = nn.Linear(cin, int(context["cout"]), bias=context["bias"]).eval()
    return module, torch.randn(batch, cin)


class _Add(nn.Module):
    def forward(self, pair):
        return pair[0] + pair[1]


class _Flat(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.flatten(self.inner(x), 1)


@register_op("add")
def add(context: dict[str, Any], sizes: dict[str, int], batch: int):
    c = _get(context, sizes, "c")
    return _Add(), (_x(batch, c, context["hw"]), _x(batch, c, context["hw"]))


def _passthrough(op: str):
    def build(context: dict[str, Any], sizes: dict[str, int], batch: int):
        c = _get(context, sizes, "c")
        attrs = dict(context, num_features=c, momentum=0.1, track_running_stats=True)
        module = make_module(op, attrs)
        if op == "act" and hasattr(module, "inplace"):
            module.inplace = False  # the timing input is reused across calls
        if op == "adaptive_avgpool":
            module = _Flat(module)  # the flatten after the global pool runs with it
        return module.eval(), _x(batch, c, context["hw"])

    return build


for _op in ("bn", "act", "maxpool", "avgpool", "adaptive_avgpool"):
    register_op(_op)(_passthrough(_op))
