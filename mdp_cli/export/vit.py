"""Surgery: a timm ``VisionTransformer`` (DeiT, DeiT-III, ViT, DINOv2, ... as ``space.vit.vit_facts``
accepts) + (choice, kept, importance) -> the ``PrunedViT`` of ``mdp_cli.modules.vit`` and its ``mdp.arch``
spec (``family: "vit"``; the spec format is documented there). Every tensor that carries the embedding
(tokens, position embedding, every LayerNorm, layer-scale gains, projections, classifier) is sliced by the
same kept channels. A ``dynamic_img_size`` model is exported at the size it was created at."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.modules.vit import build_vit
from mdp_cli.space.vit import BRANCH_LAYOUT, HEAD_LAYOUT, STEM_LAYOUT, nondefault, vit_facts


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

    def copy_ln(src: str, dst: str) -> None:
        new[dst + ".weight"], new[dst + ".bias"] = sd[src + ".weight"][e_idx], sd[src + ".bias"][e_idx]

    new["stem.proj.weight"] = sd["patch_embed.proj.weight"][e_idx]
    if f["patch_bias"]:
        new["stem.proj.bias"] = sd["patch_embed.proj.bias"][e_idx]
    if f["patch_norm_eps"] is not None:
        copy_ln("patch_embed.norm", "stem.norm")
    # timm's prefix order: class token, then registers (or the distillation token)
    prefix = [sd[k] for k in ("cls_token", "reg_token", "dist_token") if k in sd]
    if prefix:
        new["stem.prefix"] = torch.cat(prefix, dim=1)[..., e_idx]
    if f["pos_embed"]:
        new["stem.pos_embed"] = sd["pos_embed"][..., e_idx]
    if f["norm_pre_eps"] is not None:
        copy_ln("norm_pre", "stem.norm_pre")
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
            copy_ln(p + "norm1", q + "norm")
            new[q + "attn.qkv.weight"] = torch.cat([cut(wq, q_idx), cut(wk, q_idx), cut(wv, v_idx)])
            if b is not None:
                bq, bk, bv = (t.reshape(H, D) for t in b.chunk(3))
                new[q + "attn.qkv.bias"] = torch.cat([bq[h_idx][:, q_idx].flatten(), bk[h_idx][:, q_idx].flatten(),
                                                      bv[h_idx][:, v_idx].flatten()])
            new[q + "attn.proj.weight"] = pw[e_idx][:, h_idx][:, :, v_idx].reshape(len(e_idx), -1)
            if f["proj_bias"]:
                new[q + "attn.proj.bias"] = sd[p + "attn.proj.bias"][e_idx]
            if f["layer_scale"]:
                new[q + "gamma"] = sd[p + "ls1.gamma"][e_idx]
            spec["attn"] = {"heads": len(h_idx), "qk_dim": len(q_idx), "v_dim": len(v_idx), "scale": f["scale"]}
            layer += 1
        else:
            spec["attn"] = None
        if kept.get(f"blocks.{i}.mlp", True):
            w1, w2 = sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"]
            m_idx = _top(scores.get(p + "mlp.hidden"), int(choice.get(p + "mlp.hidden", M)),
                         (w1.norm(dim=1) * w2.norm(dim=0)).double())
            q = f"blocks.{i}.{layer}."
            copy_ln(p + "norm2", q + "norm")
            new[q + "mlp.fc1.weight"] = w1[m_idx][:, e_idx]
            new[q + "mlp.fc2.weight"] = w2[e_idx][:, m_idx]
            if f["proj_bias"]:
                new[q + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][m_idx]
                new[q + "mlp.fc2.bias"] = sd[p + "mlp.fc2.bias"][e_idx]
            if f["layer_scale"]:
                new[q + "gamma"] = sd[p + "ls2.gamma"][e_idx]
            spec["mlp"] = {"hidden": len(m_idx)}
        else:
            spec["mlp"] = None
        blocks_arch.append(spec)
    if f["final_norm"]:
        copy_ln("norm", "head.norm")
    if f["fc_norm"]:
        copy_ln("fc_norm", "head.fc_norm")
    if f["num_classes"]:
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
        # the layout beyond DeiT's (absent keys load as DeiT's)
        **({"prefix_tokens": f["prefix_tokens"]} if f["prefix_tokens"] != (2 if f["distilled"] else 1) else {}),
        **nondefault(f, {**STEM_LAYOUT, **HEAD_LAYOUT, **BRANCH_LAYOUT}),
    }
    if f["dynamic_img_size"]:  # said in the spec: the source took any size, the export takes this one
        arch["note"] = (f"the source model had dynamic_img_size; this export takes {f['img_size'][0]}x{f['img_size'][1]} "
                        "inputs only (position embedding fixed at that grid)")
    pruned = build_vit(arch)
    pruned.load_state_dict({k: v.clone().contiguous() for k, v in new.items()}, strict=True)
    pruned.eval()
    return pruned, arch


def export_vit_onnx(model: nn.Module, path: str, arch: Mapping[str, Any], batch: int = 1, opset: int = 17) -> None:
    """Write the pruned model as ONNX (TorchScript exporter: one self-contained file, no external data)."""
    import warnings

    from mdp_cli.artifacts import atomic_path

    x = torch.randn(batch, int(arch["in_chans"]), *arch["img_size"])
    out = "logits" if arch["num_classes"] else "features"  # a headless backbone returns features
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(tmp), dynamo=False, input_names=["images"], output_names=[out],
                          opset_version=opset, dynamic_axes={"images": {0: "batch"}, out: {0: "batch"}})
