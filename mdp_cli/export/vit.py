"""Pruned vision transformers: plain-PyTorch modules rebuilt from an ``mdp.arch`` spec, and the surgery
that cuts them out of a timm ``VisionTransformer`` (DeiT, distilled DeiT, ViT).

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

from mdp_cli.errors import MdpError
from mdp_cli.export.spec import register_family


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


@register_family("vit")
def build_vit(arch: Mapping[str, Any]) -> nn.Module:
    return PrunedViT(arch)


# ---------------------------------------------------------------------------------------------------
# Reading a timm model
# ---------------------------------------------------------------------------------------------------


def vit_facts(model: nn.Module) -> dict[str, Any]:
    """Shape facts of a supported timm ViT; raises MdpError naming what is not supported."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover
        raise MdpError("timm is required for vision transformers") from None
    if not isinstance(model, VisionTransformer):
        raise MdpError(f"{type(model).__name__} is not a timm VisionTransformer")
    distilled = getattr(model, "dist_token", None) is not None
    problems = []
    if model.cls_token is None or model.global_pool != "token":
        problems.append("needs a class token and global_pool='token'")
    if getattr(model, "reg_token", None) is not None or getattr(model, "no_embed_class", False):
        problems.append("register tokens / no_embed_class are not supported")
    if getattr(model, "dynamic_img_size", False):
        problems.append("dynamic_img_size is not supported")
    for name in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(model, name, nn.Identity()), nn.Identity):
            problems.append(f"{name} is not supported")
    if not isinstance(model.patch_embed.norm, nn.Identity) or not isinstance(model.head, nn.Linear):
        problems.append("patch-embed norm / headless models are not supported")
    blk0 = model.blocks[0]
    for blk in model.blocks:
        for name in ("ls1", "ls2"):
            if not isinstance(getattr(blk, name), nn.Identity):
                problems.append("layer scale is not supported")
        at = blk.attn
        if not (isinstance(at.q_norm, nn.Identity) and isinstance(at.k_norm, nn.Identity)
                and isinstance(getattr(at, "norm", nn.Identity()), nn.Identity) and getattr(at, "gate", None) is None):
            problems.append("qk-norm / attention norm / gates are not supported")
        if not isinstance(blk.norm1, nn.LayerNorm) or not isinstance(blk.mlp.act, nn.GELU) \
                or getattr(blk.mlp.act, "approximate", "none") != "none" or not isinstance(blk.mlp.norm, nn.Identity):
            problems.append("only LayerNorm + exact-GELU MLP blocks are supported")
    if problems:
        raise MdpError(f"{type(model).__name__}: " + "; ".join(sorted(set(problems))))
    at = blk0.attn
    pe = model.patch_embed
    return {
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "heads": int(at.num_heads),
        "head_dim": int(at.head_dim),
        "scale": float(at.scale),
        "mlp_hidden": int(blk0.mlp.fc1.out_features),
        "img_size": [int(s) for s in pe.img_size],
        "patch_size": [int(s) for s in pe.patch_size],
        "in_chans": int(pe.proj.in_channels),
        "num_classes": int(model.head.out_features),
        "distilled": distilled,
        "prefix_tokens": 2 if distilled else 1,
        "tokens": int(pe.num_patches) + (2 if distilled else 1),
        "eps": float(blk0.norm1.eps),
        "qkv_bias": at.qkv.bias is not None,
    }


# ---------------------------------------------------------------------------------------------------
# Surgery: timm model + (choice, kept) -> PrunedViT
# ---------------------------------------------------------------------------------------------------


def _top(scores: torch.Tensor | None, k: int, fallback: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the k highest scores; ``fallback`` scores when no importance was given."""
    s = fallback if scores is None else torch.as_tensor(scores, dtype=torch.float64)
    if k > s.numel() or k <= 0:
        raise MdpError(f"cannot keep {k} of {s.numel()} units")
    # stable: ties keep the lower index, so a full keep is the identity
    order = torch.argsort(-s, stable=True)[:k]
    return order.sort().values


def export_vit(
    model: nn.Module,
    choice: Mapping[str, int],
    kept: Mapping[str, bool] | None = None,
    importance: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Cut the pruned model out of a timm ViT.

    ``choice`` maps dim names of the ViT space (``embed``, ``blocks.i.attn.heads|qk|v``,
    ``blocks.i.mlp.hidden``) to kept sizes; missing dims stay full. ``kept`` maps block names
    (``blocks.i.attn``, ``blocks.i.mlp``) to False to remove a branch. ``importance`` maps dim names to
    per-unit score lists (the ``scores`` of an ``mdp.importance`` file; or the whole ``dims`` dict) and
    decides which units are kept; without it, units are ranked by weight magnitude.
    Returns ``(module, arch)`` where ``arch`` is the spec that ``build_vit`` rebuilds it from.
    """
    f = vit_facts(model)
    kept = dict(kept or {})
    choice = dict(choice)
    scores = {}
    for name, value in (importance or {}).items():
        scores[name] = value["scores"] if isinstance(value, Mapping) else value
    E, H, D, M = f["embed_dim"], f["heads"], f["head_dim"], f["mlp_hidden"]
    known = {"embed"} | {f"blocks.{i}.{s}" for i in range(f["depth"]) for s in ("attn.heads", "attn.qk", "attn.v", "mlp.hidden")}
    unknown = sorted(set(choice) - known)
    if unknown:
        raise MdpError(f"solution names dims {unknown[:3]} that this {f['depth']}-block ViT does not have")
    unknown = sorted(set(kept) - {f"blocks.{i}.{s}" for i in range(f["depth"]) for s in ("attn", "mlp")})
    if unknown:
        raise MdpError(f"solution names blocks {unknown[:3]} that this ViT does not have")

    sd = {k: v.detach() for k, v in model.state_dict().items()}
    # embedding channels: magnitude fallback = L2 norm of the patch-embedding filters
    e_idx = _top(scores.get("embed"), int(choice.get("embed", E)), sd["patch_embed.proj.weight"].flatten(1).norm(dim=1).double())
    new: dict[str, torch.Tensor] = {}
    prefix = [sd["cls_token"]] + ([sd["dist_token"]] if f["distilled"] else [])
    new["stem.proj.weight"] = sd["patch_embed.proj.weight"][e_idx]
    new["stem.proj.bias"] = sd["patch_embed.proj.bias"][e_idx]
    new["stem.prefix"] = torch.cat(prefix, dim=1)[..., e_idx]
    new["stem.pos_embed"] = sd["pos_embed"][..., e_idx]
    blocks_arch = []
    for i in range(f["depth"]):
        p, spec, layer = f"blocks.{i}.", {}, 0
        if kept.get(f"blocks.{i}.attn", True):
            w, b = sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias")
            wq, wk, wv = (t.reshape(H, D, E) for t in w.chunk(3, dim=0))
            pw = sd[p + "attn.proj.weight"].reshape(E, H, D)
            h_idx = _top(scores.get(p + "attn.heads"), int(choice.get(p + "attn.heads", H)),
                         (wq.flatten(1).norm(dim=1) + wk.flatten(1).norm(dim=1) + wv.flatten(1).norm(dim=1)).double())
            q_idx = _top(scores.get(p + "attn.qk"), int(choice.get(p + "attn.qk", D)),
                         (wq.norm(dim=(0, 2)) + wk.norm(dim=(0, 2))).double())
            v_idx = _top(scores.get(p + "attn.v"), int(choice.get(p + "attn.v", D)), wv.norm(dim=(0, 2)).double())

            def cut(t, cols):  # (H, D, E) -> kept heads, kept cols, kept embed -> (h*c, e)
                return t[h_idx][:, cols][:, :, e_idx].reshape(-1, len(e_idx))

            q = f"blocks.{i}.{layer}."
            new[q + "norm.weight"] = sd[p + "norm1.weight"][e_idx]
            new[q + "norm.bias"] = sd[p + "norm1.bias"][e_idx]
            new[q + "attn.qkv.weight"] = torch.cat([cut(wq, q_idx), cut(wk, q_idx), cut(wv, v_idx)])
            if b is not None:
                bq, bk, bv = (t.reshape(H, D) for t in b.chunk(3))
                new[q + "attn.qkv.bias"] = torch.cat([bq[h_idx][:, q_idx].flatten(), bk[h_idx][:, q_idx].flatten(),
                                                      bv[h_idx][:, v_idx].flatten()])
            new[q + "attn.proj.weight"] = pw[e_idx][:, h_idx][:, :, v_idx].reshape(len(e_idx), -1)
            new[q + "attn.proj.bias"] = sd[p + "attn.proj.bias"][e_idx]
            spec["attn"] = {"heads": len(h_idx), "qk_dim": len(q_idx), "v_dim": len(v_idx), "scale": f["scale"]}
            layer += 1
        else:
            spec["attn"] = None
        if kept.get(f"blocks.{i}.mlp", True):
            w1, w2 = sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"]
            m_idx = _top(scores.get(p + "mlp.hidden"), int(choice.get(p + "mlp.hidden", M)),
                         (w1.norm(dim=1) * w2.norm(dim=0)).double())
            q = f"blocks.{i}.{layer}."
            new[q + "norm.weight"] = sd[p + "norm2.weight"][e_idx]
            new[q + "norm.bias"] = sd[p + "norm2.bias"][e_idx]
            new[q + "mlp.fc1.weight"] = w1[m_idx][:, e_idx]
            new[q + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][m_idx]
            new[q + "mlp.fc2.weight"] = w2[e_idx][:, m_idx]
            new[q + "mlp.fc2.bias"] = sd[p + "mlp.fc2.bias"][e_idx]
            spec["mlp"] = {"hidden": len(m_idx)}
        else:
            spec["mlp"] = None
        blocks_arch.append(spec)
    new["head.norm.weight"] = sd["norm.weight"][e_idx]
    new["head.norm.bias"] = sd["norm.bias"][e_idx]
    new["head.head.weight"] = sd["head.weight"][:, e_idx]
    new["head.head.bias"] = sd["head.bias"]
    if f["distilled"]:
        new["head.head_dist.weight"] = sd["head_dist.weight"][:, e_idx]
        new["head.head_dist.bias"] = sd["head_dist.bias"]
    arch = {
        "family": "vit",
        "embed_dim": len(e_idx),
        "img_size": f["img_size"],
        "patch_size": f["patch_size"],
        "in_chans": f["in_chans"],
        "num_classes": f["num_classes"],
        "distilled": f["distilled"],
        "eps": f["eps"],
        "qkv_bias": f["qkv_bias"],
        "blocks": blocks_arch,
    }
    pruned = build_vit(arch)
    pruned.load_state_dict({k: v.clone().contiguous() for k, v in new.items()}, strict=True)
    pruned.eval()
    return pruned, arch


def export_vit_onnx(model: nn.Module, path: str, arch: Mapping[str, Any], batch: int = 1, opset: int = 17) -> None:
    """Write the pruned model as ONNX (TorchScript exporter: one self-contained file, no external data)."""
    import warnings

    from mdp_cli.artifacts import atomic_path

    x = torch.randn(batch, int(arch["in_chans"]), *arch["img_size"])
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(tmp), dynamo=False, input_names=["images"], output_names=["logits"],
                          opset_version=opset, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
