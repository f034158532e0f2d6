"""Latency op builders for Swin transformers: the modules of ``mdp_cli.modules.swin`` that the exported
model runs (window attention branch with its shift and mask, MLP branch, stem, patch merging, head), on
an input of the stage's token grid, batch and dtype."""

from __future__ import annotations

from typing import Any

import torch

from mdp_cli.latency.ops import register_op
from mdp_cli.modules.swin import PatchMerge, SwinHead, SwinMlpBranch, SwinStem, WindowAttentionBranch


def _dtype(context: dict[str, Any]) -> torch.dtype:
    return getattr(torch, context.get("dtype", "float32"))


def _grid(context: dict[str, Any], dim: int, batch: int) -> torch.Tensor:
    h, w = context["res"]
    return torch.randn(batch, int(h), int(w), int(dim), dtype=_dtype(context))


@register_op("swin_attn")
def swin_attn(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = WindowAttentionBranch(int(context["dim"]), sizes["heads"], sizes["qk"], sizes["v"],
                                   int(context["full_head_dim"]) ** -0.5, context["window"], context["shift"],
                                   context["res"], float(context["eps"]), bool(context.get("qkv_bias", True)))
    return module.to(_dtype(context)).eval(), _grid(context, context["dim"], batch)


@register_op("swin_mlp")
def swin_mlp(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = SwinMlpBranch(int(context["dim"]), sizes["hidden"], float(context["eps"]))
    return module.to(_dtype(context)).eval(), _grid(context, context["dim"], batch)


@register_op("swin_stem")
def swin_stem(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = SwinStem(int(context["dim"]), tuple(context["patch_size"]), int(context["in_chans"]), float(context["eps"]))
    x = torch.randn(batch, int(context["in_chans"]), *context["img_size"], dtype=_dtype(context))
    return module.to(_dtype(context)).eval(), x


@register_op("swin_merge")
def swin_merge(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = PatchMerge(int(context["in_dim"]), int(context["dim"]), float(context["eps"]))
    return module.to(_dtype(context)).eval(), _grid(context, context["in_dim"], batch)


@register_op("swin_head")
def swin_head(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = SwinHead(int(context["dim"]), int(context["num_classes"]), float(context["eps"]))
    return module.to(_dtype(context)).eval(), _grid(context, context["dim"], batch)
