"""Latency op builders for vision transformers: the exact modules the exported model runs.

Every builder returns a module of ``mdp_cli.modules.vit`` (same LayerNorm, fused uneven qkv linear,
``F.scaled_dot_product_attention`` kernel, layer scale, residual add; the stem and head in the model's
layout: prefix/register tokens, position embedding, norms, pooling, classifier or none) and an input of
the model's token count (patches + class/register/distillation tokens), batch and dtype, so what is
timed is what the pruned model executes. The layout comes from the term's context, so it is part of the
LUT signature.

The attention branch cannot be timed as two separate halves without changing the kernel (SDPA fuses
QKᵀ, softmax and attn·V). So ``vit_qk(E, H, Q)`` times the whole branch with the value width held at a
reference ``v_ref`` and ``vit_vproj(E, H, V)`` times it with the q/k width at ``qk_ref``; ``vit_sdpa(H, Q,
V)`` times the part between the two linears alone (``modules.vit.attention_kernel``: split, per-head
views, padding to equal widths, SDPA, merge), on every Q and V: its cost follows max(Q, V) and the
kernel's own tiling, not Q + V. The profiler turns the three into tables whose sum is the branch (see
``mdp_cli.latency.vit_tables``). ``vit_attn`` times the branch at any (E, H, Q, V), used to check that split.
"""

from __future__ import annotations

from typing import Any

import torch

from mdp_cli.modules.vit import (AttentionBranch, MlpBranch, PatchStem, TokenHead, attention_kernel, head_kwargs,
                                 stem_kwargs)
from mdp_cli.latency.ops import register_op


def _dtype(context: dict[str, Any]) -> torch.dtype:
    return getattr(torch, context.get("dtype", "float32"))


def _branch_layout(context: dict[str, Any]) -> dict[str, bool]:
    """Layer scale (DINOv2, DeiT-III) and projection biases: in the context only when not DeiT's."""
    return {"layer_scale": bool(context.get("layer_scale", False)), "proj_bias": bool(context.get("proj_bias", True))}


def _tokens(context, sizes, batch):
    return torch.randn(batch, int(context["tokens"]), int(sizes["embed"]), dtype=_dtype(context))


def _attn(context: dict[str, Any], e: int, h: int, q: int, v: int, batch: int):
    d = int(context.get("full_head_dim", 64))
    module = AttentionBranch(e, h, q, v, d ** -0.5, float(context.get("eps", 1e-6)), bool(context.get("qkv_bias", True)),
                             **_branch_layout(context))
    return module.to(_dtype(context)).eval(), _tokens(context, {"embed": e}, batch)


@register_op("vit_attn")
def vit_attn(context: dict[str, Any], sizes: dict[str, int], batch: int):
    return _attn(context, sizes["embed"], sizes["heads"], sizes["qk"], sizes["v"], batch)


@register_op("vit_qk")
def vit_qk(context: dict[str, Any], sizes: dict[str, int], batch: int):
    return _attn(context, sizes["embed"], sizes["heads"], sizes["qk"], int(context.get("v_ref", 8)), batch)


@register_op("vit_vproj")
def vit_vproj(context: dict[str, Any], sizes: dict[str, int], batch: int):
    return _attn(context, sizes["embed"], sizes["heads"], int(context.get("qk_ref", 8)), sizes["v"], batch)


class AttentionKernel(torch.nn.Module):
    """``attention_kernel`` of ``PrunedAttention`` as a module (no weights): fused qkv output -> merged heads."""

    def __init__(self, heads: int, qk_dim: int, v_dim: int, scale: float):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale = heads, qk_dim, v_dim, scale

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return attention_kernel(qkv, self.heads, self.qk_dim, self.v_dim, self.scale)


@register_op("vit_sdpa")
def vit_sdpa(context: dict[str, Any], sizes: dict[str, int], batch: int):
    """S(H, Q, V): the kernel part alone, on a fused qkv tensor of the model's token count. It has no
    weights, so it is timed on its own rather than as a chain of copies."""
    h, q, v = sizes["heads"], sizes["qk"], sizes["v"]
    module = AttentionKernel(h, q, v, int(context.get("full_head_dim", 64)) ** -0.5)
    x = torch.randn(batch, int(context["tokens"]), h * (2 * q + v), dtype=_dtype(context))
    return module.to(_dtype(context)).eval(), x


@register_op("vit_mlp")
def vit_mlp(context: dict[str, Any], sizes: dict[str, int], batch: int):
    layout = _branch_layout(context)
    module = MlpBranch(sizes["embed"], sizes["hidden"], float(context.get("eps", 1e-6)), layout["layer_scale"],
                       layout["proj_bias"])
    return module.to(_dtype(context)).eval(), _tokens(context, sizes, batch)


@register_op("vit_stem")
def vit_stem(context: dict[str, Any], sizes: dict[str, int], batch: int):
    img, patch = tuple(context["img_size"]), tuple(context["patch_size"])
    module = PatchStem(sizes["embed"], img, patch, int(context["in_chans"]), int(context["prefix_tokens"]),
                       **stem_kwargs(context))
    x = torch.randn(batch, int(context["in_chans"]), *img, dtype=_dtype(context))
    return module.to(_dtype(context)).eval(), x


@register_op("vit_head")
def vit_head(context: dict[str, Any], sizes: dict[str, int], batch: int):
    module = TokenHead(sizes["embed"], int(context["num_classes"]), bool(context["distilled"]),
                       float(context.get("eps", 1e-6)), **head_kwargs(context))
    return module.to(_dtype(context)).eval(), _tokens(context, sizes, batch)
