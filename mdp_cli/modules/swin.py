"""Pruned Swin transformers (timm ``SwinTransformer``, v1) as plain-PyTorch modules, rebuilt from an
``mdp.arch`` spec (``family: "swin"``); the surgery is ``mdp_cli.export.swin``, the latency ops
``mdp_cli.latency.swin_ops`` time these same modules.

Spec::

    {"family": "swin", "img_size": [h, w], "patch_size": [p, p], "in_chans": 3, "num_classes": C (0: features),
     "eps": 1e-5, "qkv_bias": true,
     "stages": [{"dim": E_s, "res": [h_s, w_s], "downsample": bool,
                 "blocks": [{"attn": {"heads": H, "qk_dim": Q, "v_dim": V, "scale": s, "window": [wh, ww],
                                      "shift": [sh, sw]} | null,
                             "mlp": {"hidden": M} | null}, ...]}, ...]}

The stage widths E_s are fixed (patch merging couples them); heads, q/k and v widths per head and MLP
neurons are pruned per block, and each block's attention and MLP branches are removable. The window
attention is timm's explicit path (q·scale @ kᵀ + relative-position bias [+ shift mask], softmax, @ v),
which allows q/k and v of different widths; the bias table keeps the kept heads' columns.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mdp_cli.modules.registry import register_arch


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    return rel[:, :, 0] * (2 * ww - 1) + rel[:, :, 1]


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


def shift_mask(res: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor | None:
    """timm's mask for shifted windows (-100 between tokens of different image regions), or None."""
    if not any(shift):
        return None
    h = -(-res[0] // window[0]) * window[0]
    w = -(-res[1] // window[1]) * window[1]
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = cnt
            cnt += 1
    win = window_partition(img, window).squeeze(-1)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttentionBranch(nn.Module):
    """``x + window_attention(norm1(x))`` on (B, H, W, C): the removable unit ``stages.s.blocks.j.attn``."""

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, scale: float, window, shift, res, eps: float,
                 qkv_bias: bool = True):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim, self.scale = heads, qk_dim, v_dim, float(scale)
        self.window, self.shift = (int(window[0]), int(window[1])), (int(shift[0]), int(shift[1]))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.proj = nn.Linear(heads * v_dim, dim)
        wh, ww = self.window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        self.register_buffer("attn_mask", shift_mask(tuple(res), self.window, self.shift), persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        hq, hv = self.heads * self.qk_dim, self.heads * self.v_dim
        q, k, v = self.qkv(x).split([hq, hq, hv], dim=-1)
        q = q.reshape(b, n, self.heads, -1).transpose(1, 2)
        k = k.reshape(b, n, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, n, self.heads, -1).transpose(1, 2)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if self.attn_mask is not None:
            nw = self.attn_mask.shape[0]
            attn = attn.view(-1, nw, self.heads, n, n) + self.attn_mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, hv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = self.norm(x)
        if any(self.shift):
            y = torch.roll(y, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        ph, pw = (self.window[0] - h % self.window[0]) % self.window[0], (self.window[1] - w % self.window[1]) % self.window[1]
        y = nn.functional.pad(y, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        y = window_reverse(self.attention(window_partition(y, self.window)), self.window, hp, wp)[:, :h, :w, :]
        if any(self.shift):
            y = torch.roll(y, shifts=self.shift, dims=(1, 2))
        return x + y


class SwinMlpBranch(nn.Module):
    """``x + mlp(norm2(x))`` on (B, H, W, C): the removable unit ``stages.s.blocks.j.mlp``."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class PatchMerge(nn.Module):
    """2x2 neighbouring tokens -> LayerNorm(4C) -> Linear(4C, C_out) (timm ``PatchMerging``)."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        _, h, w, _ = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStem(nn.Module):
    def __init__(self, dim: int, patch_size, in_chans: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinHead(nn.Module):
    """Final LayerNorm, average over the token grid, classifier (none for ``num_classes == 0``)."""

    def __init__(self, dim: int, num_classes: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).mean(dim=(1, 2))
        return x if self.fc is None else self.fc(x)


def swin_block(dim: int, spec: Mapping[str, Any], res, eps: float, qkv_bias: bool) -> nn.Sequential:
    a, m = spec.get("attn"), spec.get("mlp")
    return nn.Sequential(
        *([WindowAttentionBranch(dim, a["heads"], a["qk_dim"], a["v_dim"], a["scale"], a["window"], a["shift"], res, eps,
                                 qkv_bias)] if a else []),
        *([SwinMlpBranch(dim, m["hidden"], eps)] if m else []))


class PrunedSwin(nn.Module):
    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        eps, qkv_bias = float(arch["eps"]), bool(arch["qkv_bias"])
        stages = arch["stages"]
        self.stem = SwinStem(int(stages[0]["dim"]), tuple(arch["patch_size"]), int(arch["in_chans"]), eps)
        layers, prev = [], int(stages[0]["dim"])
        for st in stages:
            dim = int(st["dim"])
            merge = [PatchMerge(prev, dim, eps)] if st["downsample"] else []
            layers.append(nn.Sequential(*merge, *[swin_block(dim, b, st["res"], eps, qkv_bias) for b in st["blocks"]]))
            prev = dim
        self.stages = nn.Sequential(*layers)
        self.head = SwinHead(prev, int(arch["num_classes"]), eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_arch("swin")
def build_swin(arch: Mapping[str, Any]) -> nn.Module:
    return PrunedSwin(arch)
