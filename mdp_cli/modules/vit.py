"""Pruned vision transformers as plain-PyTorch modules, rebuilt from an ``mdp.arch`` spec: what an exported
ViT loads into and what the ViT latency terms time (the surgery that cuts them out of a timm model is in
``mdp_cli.modules.vit``).

The architecture spec (``family: "vit"``) names every size, so loading needs only these module classes
and the safetensors weights::

    {"family": "vit", "embed_dim": E, "img_size": [h, w], "patch_size": [p, p], "in_chans": 3,
     "num_classes": C, "distilled": bool, "eps": 1e-6, "qkv_bias": true,
     "blocks": [{"attn": {"heads": H, "qk_dim": Q, "v_dim": V, "scale": s} | null,
                 "mlp": {"hidden": M} | null}, ...]}

``attn: null`` / ``mlp: null`` mean that branch (with its LayerNorm and residual add) was removed.

Attention (``PrunedAttention``): one fused ``qkv`` linear whose output is split unevenly into
H·Q query, H·Q key and H·V value features, so Q ≠ V per head and any head count are allowed while every
head of a block keeps the same shape and the standard ``F.scaled_dot_product_attention`` kernel runs (the
narrower of q/k and v zero-padded to the wider, so the fused kernel runs even when Q ≠ V).
Its softmax scale is a stored constant, the *original* model's ``head_dim ** -0.5``: pruning q/k
columns drops (low-importance) terms of each logit q·k but leaves the remaining terms at the scale the
model was trained with. Re-deriving the scale from the pruned Q would multiply every logit by
sqrt(Q_orig / Q) and sharpen all attention maps, a change unrelated to which columns were removed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mdp_cli.modules.registry import register_arch


# ---------------------------------------------------------------------------------------------------
# Modules of the exported model
# ---------------------------------------------------------------------------------------------------


class PrunedAttention(nn.Module):
    """Multi-head self-attention with ``heads`` heads of q/k width ``qk_dim`` and value width ``v_dim``."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale: float, qkv_bias: bool = True):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale = heads, qk_dim, v_dim, float(scale)
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.proj = nn.Linear(heads * v_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attention_kernel(self.qkv(x), self.heads, self.qk_dim, self.v_dim, self.scale))


def attention_kernel(qkv: torch.Tensor, heads: int, qk_dim: int, v_dim: int, scale: float) -> torch.Tensor:
    """Fused qkv output (b, n, H·(2Q+V)) -> per-head q, k, v -> SDPA -> merged heads (b, n, H·V).
    Everything of ``PrunedAttention`` between its two linears (the ``vit_sdpa`` latency term times this).

    When Q ≠ V the narrower side is zero-padded to D = max(Q, V) so that SDPA gets equal head widths and
    runs its fused kernel (flash attention on CPU and GPU need q, k and v of one width; otherwise PyTorch
    falls back to its unfused math path, measured 1.6-2.3× slower for the kernel at 197 tokens on CPU).
    Zero q/k columns add nothing to any logit q·k, and zero v columns give zero outputs that are sliced
    off, so the result is exactly that of attention at (Q, V)."""
    b, n, _ = qkv.shape
    hq, hv = heads * qk_dim, heads * v_dim
    q, k, v = qkv.split([hq, hq, hv], dim=-1)
    q = q.reshape(b, n, heads, qk_dim).transpose(1, 2)
    k = k.reshape(b, n, heads, qk_dim).transpose(1, 2)
    v = v.reshape(b, n, heads, v_dim).transpose(1, 2)
    width = max(qk_dim, v_dim)
    if qk_dim < width:
        q, k = F.pad(q, (0, width - qk_dim)), F.pad(k, (0, width - qk_dim))
    elif v_dim < width:
        v = F.pad(v, (0, width - v_dim))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    if v_dim < width:
        out = out[..., :v_dim]
    return out.transpose(1, 2).reshape(b, n, hv)


class PrunedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AttentionBranch(nn.Module):
    """``x + attn(norm1(x))``: the removable unit ``blocks.i.attn`` (also what the LUT measures)."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale: float, eps: float, qkv_bias: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.attn = PrunedAttention(dim, heads, qk_dim, v_dim, scale, qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class MlpBranch(nn.Module):
    """``x + mlp(norm2(x))``: the removable unit ``blocks.i.mlp``."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = PrunedMlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class PatchStem(nn.Module):
    """Patch embedding, class (and distillation) token, position embedding: image -> tokens (E wide)."""

    def __init__(self, dim: int, img_size, patch_size, in_chans: int, prefix_tokens: int):
        super().__init__()
        grid = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1])
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.prefix = nn.Parameter(torch.zeros(1, prefix_tokens, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid + prefix_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class TokenHead(nn.Module):
    """Final norm and classifier on the class token (distilled: mean of class and distillation heads)."""

    def __init__(self, dim: int, num_classes: int, distilled: bool, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distilled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.head_dist is None:
            return self.head(x[:, 0])
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


class PrunedViT(nn.Module):
    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        dim, eps = int(arch["embed_dim"]), float(arch["eps"])
        self.stem = PatchStem(dim, tuple(arch["img_size"]), tuple(arch["patch_size"]), int(arch["in_chans"]),
                              2 if arch["distilled"] else 1)
        layers: list[nn.Module] = []
        for spec in arch["blocks"]:
            a, m = spec.get("attn"), spec.get("mlp")
            layers.append(nn.Sequential(
                *([AttentionBranch(dim, a["heads"], a["qk_dim"], a["v_dim"], a["scale"], eps, bool(arch["qkv_bias"]))]
                  if a else []),
                *([MlpBranch(dim, m["hidden"], eps)] if m else []),
            ))
        self.blocks = nn.Sequential(*layers)
        self.head = TokenHead(dim, int(arch["num_classes"]), bool(arch["distilled"]), eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@register_arch("vit")
def build_vit(arch: Mapping[str, Any]) -> nn.Module:
    return PrunedViT(arch)
