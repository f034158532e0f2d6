"""Pruned vision transformers as plain-PyTorch modules, rebuilt from an ``mdp.arch`` spec: what an exported
ViT loads into and what the ViT latency terms time (the surgery that cuts them out of a timm model is in
``mdp_cli.export.vit``).

The architecture spec (``family: "vit"``) names every size, so loading needs only these module classes
and the safetensors weights::

    {"family": "vit", "embed_dim": E, "img_size": [h, w], "patch_size": [p, p], "in_chans": 3,
     "num_classes": C, "distilled": bool, "eps": 1e-6, "qkv_bias": true,
     "blocks": [{"attn": {"heads": H, "qk_dim": Q, "v_dim": V, "scale": s} | null,
                 "mlp": {"hidden": M} | null}, ...],
     # optional (absent: DeiT's layout, so older exports load unchanged)
     "prefix_tokens": 1, "pos_embed": "with_prefix" | "patches" | null, "patch_bias": true,
     "patch_norm_eps": null | eps, "norm_pre_eps": null | eps, "layer_scale": false, "proj_bias": true,
     "global_pool": "token" | "avg" | "max" | "avgmax" | "", "pool_include_prefix": false,
     "final_norm": true, "fc_norm": false}

``attn: null`` / ``mlp: null`` mean that branch (with its LayerNorm and residual add) was removed.
``num_classes: 0`` is a headless backbone: the output is the pooled features (as wide as the kept
embedding). ``prefix_tokens`` counts the class, register and distillation tokens; ``pos_embed:
"patches"`` is timm's ``no_embed_class`` (registers and class token carry no position).

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

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale: float, qkv_bias: bool = True,
                 proj_bias: bool = True):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale = heads, qk_dim, v_dim, float(scale)
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.proj = nn.Linear(heads * v_dim, dim, bias=proj_bias)

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
    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AttentionBranch(nn.Module):
    """``x + attn(norm1(x)) [* gamma]``: the removable unit ``blocks.i.attn`` (also what the LUT measures).
    ``layer_scale``: a per-channel gain on the branch output (timm ``ls1``: DINOv2, DeiT-III, CaiT)."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale: float, eps: float, qkv_bias: bool,
                 layer_scale: bool = False, proj_bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.attn = PrunedAttention(dim, heads, qk_dim, v_dim, scale, qkv_bias, proj_bias)
        self.gamma = nn.Parameter(torch.ones(dim)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm(x))
        return x + (y if self.gamma is None else y * self.gamma)


class MlpBranch(nn.Module):
    """``x + mlp(norm2(x)) [* gamma]``: the removable unit ``blocks.i.mlp`` (``gamma``: timm's ``ls2``)."""

    def __init__(self, dim: int, hidden: int, eps: float, layer_scale: bool = False, bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = PrunedMlp(dim, hidden, bias)
        self.gamma = nn.Parameter(torch.ones(dim)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(x))
        return x + (y if self.gamma is None else y * self.gamma)


class PatchStem(nn.Module):
    """Image -> tokens (E wide): patch embedding (conv, optional LayerNorm), prefix tokens (class,
    registers or distillation token, in timm's order), position embedding (over prefix and patches, or
    over the patches only, added before the prefix is prepended: timm's ``no_embed_class``), optional
    ``norm_pre``."""

    def __init__(self, dim: int, img_size, patch_size, in_chans: int, prefix_tokens: int, *, patch_bias: bool = True,
                 patch_norm_eps: float | None = None, pos_embed: str | None = "with_prefix",
                 norm_pre_eps: float | None = None):
        super().__init__()
        grid = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1])
        self.pos_mode = pos_embed
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        self.norm = nn.LayerNorm(dim, eps=patch_norm_eps) if patch_norm_eps is not None else None
        self.prefix = nn.Parameter(torch.zeros(1, prefix_tokens, dim)) if prefix_tokens else None
        n_pos = grid + (prefix_tokens if pos_embed == "with_prefix" else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, dim)) if pos_embed else None
        self.norm_pre = nn.LayerNorm(dim, eps=norm_pre_eps) if norm_pre_eps is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        if self.pos_embed is not None and self.pos_mode == "patches":
            x = x + self.pos_embed
        if self.prefix is not None:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None and self.pos_mode == "with_prefix":
            x = x + self.pos_embed
        return x if self.norm_pre is None else self.norm_pre(x)


class TokenHead(nn.Module):
    """Final norm, pooling (class token, or average / max / avgmax over the patch tokens), ``fc_norm`` and
    the classifier (distilled: mean of class and distillation heads). ``num_classes == 0``: no classifier,
    the pooled features are the output (headless backbones)."""

    def __init__(self, dim: int, num_classes: int, distilled: bool, eps: float, *, pool: str = "token",
                 prefix_tokens: int = 1, final_norm: bool = True, fc_norm: bool = False,
                 pool_include_prefix: bool = False):
        super().__init__()
        self.pool, self.prefix_tokens, self.include_prefix = pool, prefix_tokens, pool_include_prefix
        self.norm = nn.LayerNorm(dim, eps=eps) if final_norm else None
        self.fc_norm = nn.LayerNorm(dim, eps=eps) if fc_norm else None
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        self.head_dist = nn.Linear(dim, num_classes) if distilled and num_classes else None
        self.distilled = distilled

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "token":
            return x[:, 0]
        if not self.pool:
            return x
        x = x if self.include_prefix else x[:, self.prefix_tokens:]
        if self.pool == "avg":
            return x.mean(dim=1)
        if self.pool == "max":
            return x.amax(dim=1)
        return 0.5 * (x.amax(dim=1) + x.mean(dim=1))  # avgmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.distilled:
            a, b = x[:, 0], x[:, 1]
            if self.head is not None:
                a, b = self.head(a), self.head_dist(b)
            return (a + b) / 2
        x = self._pool(x)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        return x if self.head is None else self.head(x)


def stem_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    """``PatchStem`` keyword arguments from an arch spec or a latency context (absent keys: DeiT's layout)."""
    return {"patch_bias": bool(arch.get("patch_bias", True)), "patch_norm_eps": arch.get("patch_norm_eps"),
            "pos_embed": arch.get("pos_embed", "with_prefix"), "norm_pre_eps": arch.get("norm_pre_eps")}


def head_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    """``TokenHead`` keyword arguments from an arch spec or a latency context (absent keys: DeiT's layout)."""
    return {"pool": arch.get("global_pool", "token"), "prefix_tokens": int(prefix_tokens(arch)),
            "final_norm": bool(arch.get("final_norm", True)), "fc_norm": bool(arch.get("fc_norm", False)),
            "pool_include_prefix": bool(arch.get("pool_include_prefix", False))}


def prefix_tokens(arch: Mapping[str, Any]) -> int:
    return int(arch["prefix_tokens"]) if "prefix_tokens" in arch else (2 if arch.get("distilled") else 1)


class PrunedViT(nn.Module):
    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        dim, eps = int(arch["embed_dim"]), float(arch["eps"])
        ls, bias = bool(arch.get("layer_scale", False)), bool(arch.get("proj_bias", True))
        self.stem = PatchStem(dim, tuple(arch["img_size"]), tuple(arch["patch_size"]), int(arch["in_chans"]),
                              prefix_tokens(arch), **stem_kwargs(arch))
        layers: list[nn.Module] = []
        for spec in arch["blocks"]:
            a, m = spec.get("attn"), spec.get("mlp")
            layers.append(nn.Sequential(
                *([AttentionBranch(dim, a["heads"], a["qk_dim"], a["v_dim"], a["scale"], eps, bool(arch["qkv_bias"]),
                                   ls, bias)] if a else []),
                *([MlpBranch(dim, m["hidden"], eps, ls, bias)] if m else []),
            ))
        self.blocks = nn.Sequential(*layers)
        self.head = TokenHead(dim, int(arch["num_classes"]), bool(arch["distilled"]), eps, **head_kwargs(arch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@register_arch("vit")
def build_vit(arch: Mapping[str, Any]) -> nn.Module:
    return PrunedViT(arch)
