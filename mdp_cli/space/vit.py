"""The pruning space of a timm vision transformer (DeiT, distilled DeiT, DeiT-III, ViT, DINOv2, ...).

What is supported is decided by ``vit_facts`` (layout variants: class token or none, register tokens,
layer scale, patch-embed norm, ``norm_pre``, avg/max pooling, ``fc_norm``, headless); the rest is refused
in one line.

Dims (names are the interface between score, solve and export):

- ``embed``: the global embedding width E, shared by every block's residual stream, the patch
  embedding, class/register/distillation tokens, position embedding, every LayerNorm, every layer scale
  and the head(s).
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


POOLS = ("token", "avg", "max", "avgmax", "")
# Arch/latency-context keys of the model's layout, with the values of the original DeiT/ViT layout. Only
# keys that differ from these enter a latency signature, so DeiT rows profiled before these variants
# existed keep their signatures (and stay reusable).
STEM_LAYOUT = {"patch_bias": True, "patch_norm_eps": None, "pos_embed": "with_prefix", "norm_pre_eps": None}
HEAD_LAYOUT = {"global_pool": "token", "final_norm": True, "fc_norm": False, "pool_include_prefix": False}
BRANCH_LAYOUT = {"layer_scale": False, "proj_bias": True}


def _ln_eps(module: nn.Module, what: str, problems: list[str]) -> float | None:
    """eps of a LayerNorm, None for Identity; anything else is a problem."""
    if isinstance(module, nn.Identity):
        return None
    if not (isinstance(module, nn.LayerNorm) and type(module).__name__ == "LayerNorm"):  # nn's or timm's
        problems.append(f"{what} {type(module).__name__} is not supported (LayerNorm only)")
        return None
    if not module.elementwise_affine:
        problems.append(f"{what} without affine parameters is not supported")
    return float(module.eps)


def vit_facts(model: nn.Module) -> dict[str, Any]:
    """Shape and layout facts of a supported timm ViT; raises one MdpError naming what is not supported.

    Supported: timm ``VisionTransformer`` (and the distilled DeiT) with standard pre-norm blocks (LayerNorm,
    standard attention, exact-GELU MLP), with or without class token, register tokens, ``no_embed_class``,
    layer scale (``ls1``/``ls2``), patch-embed norm, ``norm_pre``, ``fc_norm``, token or avg/max/avgmax
    pooling, a classifier or none (``num_classes=0``: features out), ``dynamic_img_size`` (the export is
    fixed at the size the model was created at)."""
    try:
        from timm.layers import LayerScale, Mlp
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # pragma: no cover
        raise MdpError("timm is required for vision transformers") from None
    if not isinstance(model, VisionTransformer):
        raise MdpError(f"{type(model).__name__} is not a timm VisionTransformer")
    distilled = getattr(model, "dist_token", None) is not None
    problems: list[str] = []
    pool = model.global_pool
    if getattr(model, "attn_pool", None) is not None or pool not in POOLS:
        problems.append(f"global_pool={pool!r} (attention pooling) is not supported")
    pe = model.patch_embed
    if type(pe).__name__ != "PatchEmbed" or not isinstance(pe.proj, nn.Conv2d):
        problems.append(f"patch embedding {type(pe).__name__} is not supported (a plain conv PatchEmbed only)")
    if getattr(pe, "dynamic_img_pad", False):
        problems.append("dynamic_img_pad is not supported")
    patch_norm_eps = _ln_eps(pe.norm, "patch-embed norm", problems)
    norm_pre_eps = _ln_eps(model.norm_pre, "norm_pre", problems)
    final_eps = _ln_eps(model.norm, "final norm", problems)
    fc_eps = _ln_eps(model.fc_norm, "fc_norm", problems)
    head = model.head
    if not isinstance(head, (nn.Linear, nn.Identity)):
        problems.append(f"classifier {type(head).__name__} is not supported (Linear or none)")
    blk0 = model.blocks[0]
    layer_scale = isinstance(blk0.ls1, LayerScale)
    proj_bias = blk0.attn.proj.bias is not None
    eps = float(getattr(blk0.norm1, "eps", 1e-6))
    for blk in model.blocks:
        if type(blk) is not Block:
            problems.append(f"block {type(blk).__name__} is not supported (timm's pre-norm Block only)")
            continue
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name)
            if not (isinstance(ls, LayerScale) if layer_scale else isinstance(ls, nn.Identity)):
                problems.append("layer scale in some blocks only is not supported")
        at = blk.attn
        if not (isinstance(getattr(at, "q_norm", None), nn.Identity) and isinstance(getattr(at, "k_norm", None), nn.Identity)
                and isinstance(getattr(at, "norm", nn.Identity()), nn.Identity) and getattr(at, "gate", None) is None
                and hasattr(at, "qkv")):
            problems.append("qk-norm / attention norm / gates / non-standard attention are not supported")
            continue
        if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.act, nn.GELU) \
                or getattr(blk.mlp.act, "approximate", "none") != "none" or not isinstance(blk.mlp.norm, nn.Identity):
            problems.append("only exact-GELU Mlp blocks are supported (no GLU/SwiGLU, other activations, MLP norm)")
        for norm, what in ((blk.norm1, "block norm"), (blk.norm2, "block norm")):
            if _ln_eps(norm, what, problems) not in (None, eps) or isinstance(norm, nn.Identity):
                problems.append("block norms with different eps (or none) are not supported")
        if (at.proj.bias is not None) != proj_bias or (blk.mlp.fc1.bias is not None) != proj_bias \
                or (blk.mlp.fc2.bias is not None) != proj_bias or at.proj.out_features != model.embed_dim:
            problems.append("mixed projection biases / attention output widths are not supported")
    for other in (final_eps, fc_eps, norm_pre_eps):
        if other is not None and other != eps:
            problems.append("final/fc/pre norms with another eps than the blocks' are not supported")
    if problems:
        raise MdpError(f"{type(model).__name__}: " + "; ".join(sorted(set(problems))))
    at = blk0.attn
    prefix = int(model.num_prefix_tokens)
    if model.pos_embed is None:
        pos = None
    else:
        pos = "patches" if model.no_embed_class else "with_prefix"
    num_classes = int(head.out_features) if isinstance(head, nn.Linear) else 0
    layout = {
        "prefix_tokens": prefix, "reg_tokens": int(getattr(model, "num_reg_tokens", 0) or 0),
        "class_token": model.cls_token is not None,
        "patch_bias": pe.proj.bias is not None, "patch_norm_eps": patch_norm_eps, "pos_embed": pos,
        "norm_pre_eps": norm_pre_eps, "layer_scale": layer_scale, "proj_bias": proj_bias,
        "global_pool": "token" if distilled else pool, "pool_include_prefix": bool(getattr(model, "pool_include_prefix", False)),
        "final_norm": final_eps is not None, "fc_norm": fc_eps is not None,
    }
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
        "num_classes": num_classes,
        "distilled": distilled,
        "tokens": int(pe.num_patches) + prefix,
        "eps": eps,
        "qkv_bias": at.qkv.bias is not None,
        "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
        **layout,
    }


def nondefault(f: Mapping[str, Any], layout: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``layout`` whose value in ``f`` differs from the DeiT layout."""
    return {k: f[k] for k, default in layout.items() if f[k] != default}


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
    # layer scale / projection biases change the branches around the kernel, not the kernel
    branch_ctx = {**ctx, **nondefault(f, BRANCH_LAYOUT)}
    dims = [SpaceDim("embed", E, st["embed"], size_options(E, st["embed"], min_embed), _embed_slices(f), None, "embed")]
    terms = [
        SpaceTerm("stem", "vit_stem", ("embed",), ("embed",),
                  {"img_size": f["img_size"], "patch_size": f["patch_size"], "in_chans": f["in_chans"],
                   "prefix_tokens": f["prefix_tokens"], "batch": batch, "dtype": dtype, **nondefault(f, STEM_LAYOUT)}),
        SpaceTerm("head", "vit_head", ("embed",), ("embed",),
                  {"tokens": f["tokens"], "num_classes": f["num_classes"], "distilled": f["distilled"],
                   "eps": f["eps"], "batch": batch, "dtype": dtype, **head_context(f)}),
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
                      dict(branch_ctx), attn),
            SpaceTerm(p + "attn.vproj", "vit_vproj", ("embed", p + "attn.heads", p + "attn.v"), ("embed", "heads", "v"),
                      dict(branch_ctx), attn),
            SpaceTerm(p + "attn.sdpa", "vit_sdpa", (p + "attn.heads", p + "attn.qk", p + "attn.v"), ("heads", "qk", "v"),
                      dict(ctx), attn),
            SpaceTerm(p + "mlp", "vit_mlp", ("embed", p + "mlp.hidden"), ("embed", "hidden"),
                      {"tokens": f["tokens"], "batch": batch, "dtype": dtype, "eps": f["eps"],
                       **nondefault(f, BRANCH_LAYOUT)}, mlp),
        ]
    c, h, w = f["in_chans"], *f["img_size"]
    return PruningSpace(name, "vit", (c, h, w), dims, terms, blocks)


def head_context(f: Mapping[str, Any]) -> dict[str, Any]:
    """The head's non-DeiT layout; the prefix count matters to it only when pooling over patch tokens."""
    ctx = nondefault(f, HEAD_LAYOUT)
    if f["global_pool"] not in ("token", "") and not f["pool_include_prefix"]:
        ctx["prefix_tokens"] = f["prefix_tokens"]
    return ctx


def _embed_slices(f: Mapping[str, Any]) -> list[Slice]:
    s = [Slice("patch_embed.proj", "weight", 0)]
    if f["patch_bias"]:
        s.append(Slice("patch_embed.proj", "bias", 0))
    if f["patch_norm_eps"] is not None:
        s += [Slice("patch_embed.norm", "weight", 0), Slice("patch_embed.norm", "bias", 0)]
    for token, present in (("cls_token", f["class_token"]), ("reg_token", f["reg_tokens"]), ("dist_token", f["distilled"]),
                           ("pos_embed", f["pos_embed"])):
        if present:
            s.append(Slice(token, "", 2))
    if f["norm_pre_eps"] is not None:
        s += [Slice("norm_pre", "weight", 0), Slice("norm_pre", "bias", 0)]
    for i in range(f["depth"]):
        p = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s += [Slice(p + n, "weight", 0), Slice(p + n, "bias", 0)]
        s += [Slice(p + "attn.qkv", "weight", 1), Slice(p + "attn.proj", "weight", 0), Slice(p + "mlp.fc1", "weight", 1),
              Slice(p + "mlp.fc2", "weight", 0)]
        if f["proj_bias"]:
            s += [Slice(p + "attn.proj", "bias", 0), Slice(p + "mlp.fc2", "bias", 0)]
        if f["layer_scale"]:
            s += [Slice(p + "ls1", "gamma", 0), Slice(p + "ls2", "gamma", 0)]
    for norm, present in (("norm", f["final_norm"]), ("fc_norm", f["fc_norm"])):
        if present:
            s += [Slice(norm, "weight", 0), Slice(norm, "bias", 0)]
    if f["num_classes"]:
        s.append(Slice("head", "weight", 1))
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
    importance: Mapping[str, Any] | None,
    constant_latency: float = 0.0,
    family: str = "vit",
    counts: Mapping[str, Mapping[str, Any]] | None = None,
    **provenance_fields: Any,
):
    """The solver's problem for a ViT space: dims with cumulative importance, one latency term per space
    term (``tables[term.name]``, full-option arrays in ms, e.g. from ``vit_tables``), the attention and MLP
    branches as removable blocks. The embedding importance is split: its ``base`` part is always
    counted, each branch's share only while that branch is kept (``gated`` of the importance file).
    Importance is rescaled so that the dense total is 100 (as the CNN problem builder does: the optimum
    does not change, the solver sees O(1) values). ``importance`` None: a latency-only problem (a constant
    importance per kept step, as the CNN builder makes), for timing and calibration."""
    import numpy as np

    from mdp_cli.solve.problem import Block, Dim, ImportanceEntry, Term, make_problem

    if importance is None:
        importance = {d.name: {"options": list(d.options), "cumulative": list(range(1, len(d.options) + 1))}
                      for d in space.dims}
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
    counts = counts or {}  # per term {"params", "flops"} tables (latency/counts.py), for caps beside the budget
    terms = [Term(t.name, tuple(t.dims), np.asarray(tables[t.name], float), t.block,
                  {k: np.asarray(v, float) for k, v in counts.get(t.name, {}).items()}) for t in space.terms]
    blocks = [Block(b.name, b.removable) for b in space.blocks]
    return make_problem(dims, entries, terms, blocks, constant_latency=constant_latency, name=space.model_name,
                        model=space.model_name, family=family, **provenance_fields)


def is_vit_model(model: nn.Module) -> bool:
    """True for a timm VisionTransformer (the family the ``mdp`` commands dispatch to this module for)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, VisionTransformer)
