"""The pruning space of a timm vision transformer (DeiT, distilled DeiT, ViT).

Dims (names are the interface between score, solve and export):

- ``embed``: the global embedding width E, shared by every block's residual stream, the patch
  embedding, class/distillation tokens, position embedding, every LayerNorm and the head(s).
- per block i: ``blocks.i.attn.heads`` (H, step 1 head), ``blocks.i.attn.qk`` (Q, query/key width per
  head), ``blocks.i.attn.v`` (V, value width per head), ``blocks.i.mlp.hidden`` (M). Q and V are uniform
  across the heads of a block (the same column indices in every head), so standard attention kernels run.

Blocks: ``blocks.i.attn`` (LayerNorm + attention + residual add) and ``blocks.i.mlp`` (LayerNorm + MLP +
residual add) are separately removable: finer than the paper's whole-block gating (a whole block is both
removed). H, Q, V belong to ``blocks.i.attn``; M to ``blocks.i.mlp``.

Latency terms (all blocks share one shape, so one table set serves every block):
``vit_qk(E, H, Q)``, ``vit_vproj(E, H, V)``, ``vit_sdpa(H, Q, V)`` (gated by ``blocks.i.attn``; the first two
the projections, LayerNorm and residual add, the last the attention kernel), ``vit_mlp(E, M)`` (gated by
``blocks.i.mlp``), and the fixed parts ``vit_stem(E)`` (patch embedding, tokens, position embedding)
and ``vit_head(E)`` (final LayerNorm, classifier(s)).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.space.core import PruningSpace, Slice, SpaceBlock, SpaceDim, SpaceTerm


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

IMPORTANCE_TOTAL = 100.0
DEFAULT_STEPS = {"embed": 16, "heads": 1, "qk": 8, "v": 8, "mlp": 64}


def size_options(size: int, step: int, min_size: int | None = None) -> tuple[int, ...]:
    """Sizes step, 2·step, ... up to the full size (always included); option 0 (nothing) is never allowed."""
    if step <= 0:
        raise ValueError("step must be positive")
    opts = list(range(step, size, step)) + [size]
    if min_size:
        opts = [o for o in opts if o >= min_size] or [size]
    return tuple(opts)


def build_vit_space(
    model: nn.Module,
    name: str,
    steps: Mapping[str, int] | None = None,
    batch: int = 1,
    dtype: str = "float32",
    min_embed: int | None = None,
) -> PruningSpace:
    """Discover the space of a timm ViT. ``steps`` overrides ``DEFAULT_STEPS`` (keys embed/heads/qk/v/mlp)."""
    f = vit_facts(model)
    st = {**DEFAULT_STEPS, **(steps or {})}
    E, H, D, M = f["embed_dim"], f["heads"], f["head_dim"], f["mlp_hidden"]
    ctx = {"tokens": f["tokens"], "batch": batch, "dtype": dtype, "eps": f["eps"], "qkv_bias": f["qkv_bias"],
           "full_heads": H, "full_head_dim": D,
           # the exported attention pads Q != V to max(Q, V) for the fused kernel; rows timed without it
           # (older LUTs) have another signature and are not reused
           "attention": "sdpa-padded",
           # the attention branch is timed whole; these widths are the reference points of its qk/vproj split
           "qk_ref": size_options(D, st["qk"])[0], "v_ref": size_options(D, st["v"])[0]}
    dims = [SpaceDim("embed", E, st["embed"], size_options(E, st["embed"], min_embed), _embed_slices(f), None, "embed")]
    terms = [
        SpaceTerm("stem", "vit_stem", ("embed",), ("embed",),
                  {"img_size": f["img_size"], "patch_size": f["patch_size"], "in_chans": f["in_chans"],
                   "prefix_tokens": f["prefix_tokens"], "batch": batch, "dtype": dtype}),
        SpaceTerm("head", "vit_head", ("embed",), ("embed",),
                  {"tokens": f["tokens"], "num_classes": f["num_classes"], "distilled": f["distilled"],
                   "eps": f["eps"], "batch": batch, "dtype": dtype}),
    ]
    blocks = []
    for i in range(f["depth"]):
        p = f"blocks.{i}."
        attn, mlp = p + "attn", p + "mlp"
        blocks += [SpaceBlock(attn, True, [p + "norm1", p + "attn"]), SpaceBlock(mlp, True, [p + "norm2", p + "mlp"])]
        qkv = [Slice(p + "attn.qkv", "weight", 0), Slice(p + "attn.qkv", "bias", 0)]
        dims += [
            SpaceDim(p + "attn.heads", H, st["heads"], size_options(H, st["heads"]),
                     qkv + [Slice(p + "attn.proj", "weight", 1)], attn, "heads"),
            SpaceDim(p + "attn.qk", D, st["qk"], size_options(D, st["qk"]), qkv[:], attn, "qk"),
            SpaceDim(p + "attn.v", D, st["v"], size_options(D, st["v"]),
                     qkv + [Slice(p + "attn.proj", "weight", 1)], attn, "v"),
            SpaceDim(p + "mlp.hidden", M, st["mlp"], size_options(M, st["mlp"]),
                     [Slice(p + "mlp.fc1", "weight", 0), Slice(p + "mlp.fc1", "bias", 0),
                      Slice(p + "mlp.fc2", "weight", 1)], mlp, "mlp"),
        ]
        terms += [
            SpaceTerm(p + "attn.qk", "vit_qk", ("embed", p + "attn.heads", p + "attn.qk"), ("embed", "heads", "qk"),
                      dict(ctx), attn),
            SpaceTerm(p + "attn.vproj", "vit_vproj", ("embed", p + "attn.heads", p + "attn.v"), ("embed", "heads", "v"),
                      dict(ctx), attn),
            SpaceTerm(p + "attn.sdpa", "vit_sdpa", (p + "attn.heads", p + "attn.qk", p + "attn.v"), ("heads", "qk", "v"),
                      dict(ctx), attn),
            SpaceTerm(p + "mlp", "vit_mlp", ("embed", p + "mlp.hidden"), ("embed", "hidden"),
                      {"tokens": f["tokens"], "batch": batch, "dtype": dtype, "eps": f["eps"]}, mlp),
        ]
    c, h, w = f["in_chans"], *f["img_size"]
    return PruningSpace(name, "vit", (c, h, w), dims, terms, blocks)


def _embed_slices(f: Mapping[str, Any]) -> list[Slice]:
    s = [Slice("patch_embed.proj", "weight", 0), Slice("patch_embed.proj", "bias", 0),
         Slice("cls_token", "", 2), Slice("pos_embed", "", 2)]
    if f["distilled"]:
        s.append(Slice("dist_token", "", 2))
    for i in range(f["depth"]):
        p = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s += [Slice(p + n, "weight", 0), Slice(p + n, "bias", 0)]
        s += [Slice(p + "attn.qkv", "weight", 1), Slice(p + "attn.proj", "weight", 0), Slice(p + "attn.proj", "bias", 0),
              Slice(p + "mlp.fc1", "weight", 1), Slice(p + "mlp.fc2", "weight", 0), Slice(p + "mlp.fc2", "bias", 0)]
    s += [Slice("norm", "weight", 0), Slice("norm", "bias", 0), Slice("head", "weight", 1)]
    if f["distilled"]:
        s.append(Slice("head_dist", "weight", 1))
    return s


def space_summary(space: PruningSpace) -> dict[str, Any]:
    """A JSON-able description (what ``mdp space`` prints)."""
    return {
        "model": space.model_name,
        "family": space.family,
        "input_shape": list(space.input_shape),
        "dims": [{"name": d.name, "size": d.size, "step": d.step, "options": list(d.options), "block": d.block,
                  "kind": d.kind} for d in space.dims],
        "blocks": [{"name": b.name, "removable": b.removable} for b in space.blocks],
        "terms": [{"name": t.name, "op": t.op, "dims": list(t.dims), "roles": list(t.roles), "block": t.block,
                   "signature": t.signature()} for t in space.terms],
    }


def vit_problem(
    space: PruningSpace,
    tables: Mapping[str, Any],
    importance: Mapping[str, Any],
    constant_latency: float = 0.0,
    **provenance_fields: Any,
):
    """The solver's problem for a ViT space: dims with cumulative importance, one latency term per space
    term (``tables[term.name]``, full-option arrays in ms, e.g. from ``vit_tables``), the attention and MLP
    branches as removable blocks. The embedding importance is split: its ``base`` part is always
    counted, each branch's share only while that branch is kept (``gated`` of the importance file).
    Importance is rescaled so that the dense total is 100 (as the CNN problem builder does: the optimum
    does not change, the solver sees O(1) values)."""
    import numpy as np

    from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Term, make_problem

    idims = importance["dims"] if "dims" in importance else importance
    total = sum(float(idims[d.name]["cumulative"][-1]) for d in space.dims if d.name in idims)
    scale = IMPORTANCE_TOTAL / total if total > 0 else 1.0
    dims, entries = [], []
    for d in space.dims:
        if d.name not in idims:
            raise MdpError(f"importance has no dim {d.name!r}; re-run 'mdp score' for this space")
        rec = idims[d.name]
        if list(rec["options"]) != list(d.options):
            raise MdpError(f"importance of {d.name!r} was scored for options {rec['options'][:4]}..., the space has "
                           f"{list(d.options)[:4]}...; re-run 'mdp score' with the same steps")
        dims.append(Dim(d.name, tuple(d.options), d.step))
        base = rec.get("base", rec["cumulative"])
        entries.append(ImportanceEntry(d.name, np.asarray(base, float) * scale, d.block))
        for blk, values in sorted((rec.get("gated") or {}).items()):
            entries.append(ImportanceEntry(d.name, np.asarray(values, float) * scale, blk))
    terms = [Term(t.name, tuple(t.dims), np.asarray(tables[t.name], float), t.block) for t in space.terms]
    blocks = [Block(b.name, b.removable) for b in space.blocks]
    return make_problem(dims, entries, terms, blocks, constant_latency=constant_latency, name=space.model_name,
                        model=space.model_name, family="vit", **provenance_fields)


def is_vit_model(model: nn.Module) -> bool:
    """True for a timm VisionTransformer (the family the ``mdp`` commands dispatch to this module for)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, VisionTransformer)
