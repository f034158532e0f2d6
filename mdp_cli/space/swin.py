"""The pruning space of a timm Swin transformer (v1 ``SwinTransformer``: swin_tiny/small/base_patch4_window7_224).

Dims, per block j of stage s (``p = stages.s.blocks.j.``): ``p + attn.heads`` (H), ``p + attn.qk`` (Q, per
head), ``p + attn.v`` (V, per head), ``p + mlp.hidden`` (M). Blocks: ``p + attn`` (LayerNorm, shifted-window
attention, residual) and ``p + mlp`` are removable (both removed = the block removed).

Fixed (not pruned, listed by ``mdp space`` as fixed terms): the stage widths (96/192/384/768 for Swin-T),
because patch merging couples each stage's width to the next through a 4C -> 2C linear and every block of
a stage shares its residual stream; the patch embedding, the patch-merging layers and the head.

Latency terms: ``swin_attn(H, Q, V)`` and ``swin_mlp(M)`` per block (the stage width, token grid, window
and shift are the context: one table set per stage and shift), ``swin_stem``, ``swin_merge`` per stage and
``swin_head`` as fixed terms.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.space.core import PruningSpace, Slice, SpaceBlock, SpaceDim, SpaceTerm
from mdp_cli.space.vit import size_options

DEFAULT_STEPS = {"heads": 1, "qk": 8, "v": 8, "mlp": 64}
FIXED_PARTS = ("stage widths", "stem", "merges", "head")  # listed as fixed blocks by `mdp space`


def swin_facts(model: nn.Module) -> dict[str, Any]:
    """Stage and block facts of a supported timm Swin (v1); one MdpError naming what is not supported."""
    try:
        from timm.layers import Mlp
        from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention
    except ImportError:  # pragma: no cover
        raise MdpError("timm is required for Swin transformers") from None
    if not isinstance(model, SwinTransformer):
        raise MdpError(f"{type(model).__name__} is not a timm SwinTransformer (v1)")
    problems = []
    if model.dynamic_img_size:
        problems.append("dynamic image size (strict_img_size=False) is not supported")
    if model.global_pool != "avg":
        problems.append(f"global_pool={model.global_pool!r} is not supported (avg only)")
    stages = []
    eps = float(model.norm.eps)
    for s, stage in enumerate(model.layers):
        blocks = []
        for blk in stage.blocks:
            if type(blk) is not SwinTransformerBlock or type(blk.attn) is not WindowAttention or type(blk.mlp) is not Mlp:
                problems.append("only timm's SwinTransformerBlock / WindowAttention / Mlp are supported")
                continue
            if getattr(blk, "dynamic_mask", False) or getattr(blk, "always_partition", False):
                problems.append("dynamic masks / always_partition are not supported")
            if not isinstance(blk.mlp.act, nn.GELU) or getattr(blk.mlp.act, "approximate", "none") != "none":
                problems.append("only exact-GELU MLPs are supported")
            at = blk.attn
            blocks.append({"heads": int(at.num_heads), "head_dim": int(at.qkv.out_features // (3 * at.num_heads)),
                           "scale": float(at.scale), "window": [int(w) for w in blk.window_size],
                           "shift": [int(x) for x in blk.shift_size], "mlp_hidden": int(blk.mlp.fc1.out_features)})
        first = stage.blocks[0]
        stages.append({"dim": int(first.norm1.normalized_shape[0]), "res": [int(r) for r in first.input_resolution],
                       "downsample": not isinstance(stage.downsample, nn.Identity), "blocks": blocks})
    if problems:
        raise MdpError(f"{type(model).__name__}: " + "; ".join(sorted(set(problems))))
    pe = model.patch_embed
    head = model.head.fc
    return {"img_size": [int(s) for s in pe.img_size], "patch_size": [int(s) for s in pe.patch_size],
            "in_chans": int(pe.proj.in_channels), "eps": eps, "qkv_bias": model.layers[0].blocks[0].attn.qkv.bias is not None,
            "num_classes": int(head.out_features) if isinstance(head, nn.Linear) else 0, "stages": stages}


def build_swin_space(model: nn.Module, name: str, steps: Mapping[str, int] | None = None, batch: int = 1,
                     dtype: str = "float32") -> PruningSpace:
    f = swin_facts(model)
    st = {**DEFAULT_STEPS, **(steps or {})}
    dims, terms = [], []
    widths = [st["dim"] for st in f["stages"]]
    # not pruned, and said so by `mdp space` (fixed parts)
    blocks = [SpaceBlock("stage widths", False, [f"{'/'.join(map(str, widths))} fixed: patch merging couples each stage's "
                                                 "width to the next"]),
              SpaceBlock("stem", False, ["patch_embed (conv + norm)"]),
              SpaceBlock("merges", False, [f"layers.{s}.downsample" for s, st in enumerate(f["stages"]) if st["downsample"]]),
              SpaceBlock("head", False, ["norm", "head"])]
    base = {"batch": batch, "dtype": dtype, "eps": f["eps"]}
    terms.append(SpaceTerm("stem", "swin_stem", (), (), {**base, "img_size": f["img_size"], "patch_size": f["patch_size"],
                                                          "in_chans": f["in_chans"], "dim": f["stages"][0]["dim"]}))
    prev = f["stages"][0]["dim"]
    for s, stage in enumerate(f["stages"]):
        E, res = stage["dim"], stage["res"]
        if stage["downsample"]:
            in_res = f["stages"][s - 1]["res"]
            terms.append(SpaceTerm(f"stages.{s}.merge", "swin_merge", (), (),
                                   {**base, "in_dim": prev, "dim": E, "res": in_res}))
        for j, b in enumerate(stage["blocks"]):
            p = f"stages.{s}.blocks.{j}."
            attn, mlp = p + "attn", p + "mlp"
            blocks += [SpaceBlock(attn, True, [p + "norm1", p + "attn"]), SpaceBlock(mlp, True, [p + "norm2", p + "mlp"])]
            H, D, M = b["heads"], b["head_dim"], b["mlp_hidden"]
            qkv = [Slice(f"layers.{s}.blocks.{j}.attn.qkv", "weight", 0), Slice(f"layers.{s}.blocks.{j}.attn.qkv", "bias", 0)]
            dims += [
                SpaceDim(p + "attn.heads", H, st["heads"], size_options(H, st["heads"]),
                         qkv + [Slice(f"layers.{s}.blocks.{j}.attn.relative_position_bias_table", "", 1)], attn, "heads"),
                SpaceDim(p + "attn.qk", D, st["qk"], size_options(D, st["qk"]), qkv[:], attn, "qk"),
                SpaceDim(p + "attn.v", D, st["v"], size_options(D, st["v"]),
                         qkv + [Slice(f"layers.{s}.blocks.{j}.attn.proj", "weight", 1)], attn, "v"),
                SpaceDim(p + "mlp.hidden", M, st["mlp"], size_options(M, st["mlp"]),
                         [Slice(f"layers.{s}.blocks.{j}.mlp.fc1", "weight", 0)], mlp, "mlp"),
            ]
            ctx = {**base, "dim": E, "res": res, "window": b["window"], "shift": b["shift"], "qkv_bias": f["qkv_bias"],
                   "full_head_dim": D}
            terms += [
                SpaceTerm(p + "attn", "swin_attn", (p + "attn.heads", p + "attn.qk", p + "attn.v"), ("heads", "qk", "v"),
                          ctx, attn),
                SpaceTerm(p + "mlp", "swin_mlp", (p + "mlp.hidden",), ("hidden",), {**base, "dim": E, "res": res}, mlp),
            ]
        prev = E
    terms.append(SpaceTerm("head", "swin_head", (), (), {**base, "dim": prev, "res": f["stages"][-1]["res"],
                                                         "num_classes": f["num_classes"]}))
    c, h, w = f["in_chans"], *f["img_size"]
    return PruningSpace(name, "swin", (c, h, w), dims, terms, blocks)
