"""Surgery: a timm Swin (v1) + (choice, kept, importance) -> ``PrunedSwin`` (``mdp_cli.modules.swin``) and
its ``mdp.arch`` spec. Per block: the top heads (their q, k, v rows, proj columns and relative-position
bias columns), the top q/k and v columns (the same in every kept head), the top MLP neurons; stage widths,
patch embedding, patch merging and head are copied as they are."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.export.vit import _top
from mdp_cli.modules.swin import build_swin
from mdp_cli.space.swin import FIXED_PARTS, swin_facts


def export_swin(model: nn.Module, choice: Mapping[str, int], kept: Mapping[str, bool] | None = None,
                importance: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    f = swin_facts(model)
    kept, choice = dict(kept or {}), dict(choice)
    removed_fixed = [k for k in FIXED_PARTS if kept.pop(k, True) is False]
    if removed_fixed:
        raise MdpError(f"solution removes {removed_fixed}, which this Swin keeps fixed")
    scores = {k: (v["scores"] if isinstance(v, Mapping) else v) for k, v in (importance or {}).items()}
    known_blocks = {f"stages.{s}.blocks.{j}" for s, st in enumerate(f["stages"]) for j in range(len(st["blocks"]))}
    known = {f"{b}.{d}" for b in known_blocks for d in ("attn.heads", "attn.qk", "attn.v", "mlp.hidden")}
    if set(choice) - known or set(kept) - {f"{b}.{x}" for b in known_blocks for x in ("attn", "mlp")}:
        bad = sorted((set(choice) - known) | (set(kept) - {f"{b}.{x}" for b in known_blocks for x in ("attn", "mlp")}))
        raise MdpError(f"solution names dims/blocks {bad[:3]} that this Swin does not have")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    new = {"stem.proj.weight": sd["patch_embed.proj.weight"], "stem.proj.bias": sd["patch_embed.proj.bias"],
           "stem.norm.weight": sd["patch_embed.norm.weight"], "stem.norm.bias": sd["patch_embed.norm.bias"]}
    stages_arch = []
    for s, stage in enumerate(f["stages"]):
        layer = 0
        if stage["downsample"]:
            for k in ("norm.weight", "norm.bias", "reduction.weight"):
                new[f"stages.{s}.0.{k}"] = sd[f"layers.{s}.downsample.{k}"]
            layer = 1
        blocks_arch = []
        for j, b in enumerate(stage["blocks"]):
            p, src, spec, sub = f"stages.{s}.blocks.{j}.", f"layers.{s}.blocks.{j}.", {}, 0
            dst = f"stages.{s}.{layer + j}."
            E, H, D, M = stage["dim"], b["heads"], b["head_dim"], b["mlp_hidden"]
            if kept.get(p + "attn", True):
                wq, wk, wv = (t.reshape(H, D, E) for t in sd[src + "attn.qkv.weight"].chunk(3, dim=0))
                h_idx = _top(scores.get(p + "attn.heads"), int(choice.get(p + "attn.heads", H)),
                             (wq.flatten(1).norm(dim=1) + wk.flatten(1).norm(dim=1) + wv.flatten(1).norm(dim=1)).double())
                q_idx = _top(scores.get(p + "attn.qk"), int(choice.get(p + "attn.qk", D)),
                             (wq.norm(dim=(0, 2)) + wk.norm(dim=(0, 2))).double())
                v_idx = _top(scores.get(p + "attn.v"), int(choice.get(p + "attn.v", D)), wv.norm(dim=(0, 2)).double())
                q = dst + f"{sub}."
                new[q + "norm.weight"], new[q + "norm.bias"] = sd[src + "norm1.weight"], sd[src + "norm1.bias"]
                new[q + "qkv.weight"] = torch.cat([wq[h_idx][:, q_idx].reshape(-1, E), wk[h_idx][:, q_idx].reshape(-1, E),
                                                   wv[h_idx][:, v_idx].reshape(-1, E)])
                if f["qkv_bias"]:
                    bq, bk, bv = (t.reshape(H, D) for t in sd[src + "attn.qkv.bias"].chunk(3))
                    new[q + "qkv.bias"] = torch.cat([bq[h_idx][:, q_idx].flatten(), bk[h_idx][:, q_idx].flatten(),
                                                     bv[h_idx][:, v_idx].flatten()])
                new[q + "proj.weight"] = sd[src + "attn.proj.weight"].reshape(E, H, D)[:, h_idx][:, :, v_idx].reshape(E, -1)
                new[q + "proj.bias"] = sd[src + "attn.proj.bias"]
                new[q + "relative_position_bias_table"] = sd[src + "attn.relative_position_bias_table"][:, h_idx]
                spec["attn"] = {"heads": len(h_idx), "qk_dim": len(q_idx), "v_dim": len(v_idx), "scale": b["scale"],
                                "window": b["window"], "shift": b["shift"]}
                sub += 1
            else:
                spec["attn"] = None
            if kept.get(p + "mlp", True):
                w1, w2 = sd[src + "mlp.fc1.weight"], sd[src + "mlp.fc2.weight"]
                m_idx = _top(scores.get(p + "mlp.hidden"), int(choice.get(p + "mlp.hidden", M)),
                             (w1.norm(dim=1) * w2.norm(dim=0)).double())
                q = dst + f"{sub}."
                new[q + "norm.weight"], new[q + "norm.bias"] = sd[src + "norm2.weight"], sd[src + "norm2.bias"]
                new[q + "fc1.weight"], new[q + "fc1.bias"] = w1[m_idx], sd[src + "mlp.fc1.bias"][m_idx]
                new[q + "fc2.weight"], new[q + "fc2.bias"] = w2[:, m_idx], sd[src + "mlp.fc2.bias"]
                spec["mlp"] = {"hidden": len(m_idx)}
            else:
                spec["mlp"] = None
            blocks_arch.append(spec)
        stages_arch.append({"dim": stage["dim"], "res": stage["res"], "downsample": stage["downsample"],
                            "blocks": blocks_arch})
    new["head.norm.weight"], new["head.norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    if f["num_classes"]:
        new["head.fc.weight"], new["head.fc.bias"] = sd["head.fc.weight"], sd["head.fc.bias"]
    arch = {"family": "swin", "img_size": f["img_size"], "patch_size": f["patch_size"], "in_chans": f["in_chans"],
            "num_classes": f["num_classes"], "eps": f["eps"], "qkv_bias": f["qkv_bias"], "stages": stages_arch}
    pruned = build_swin(arch)
    pruned.load_state_dict({k: v.clone().contiguous() for k, v in new.items()}, strict=True)
    return pruned.eval(), arch
