"""Importance for the dims of a ViT space: first-order Taylor |Σ w·∂L/∂w| per unit and layer, or the
Fisher criterion (Σ w·∂L/∂w)² (``criterion="fisher"``).

For each batch, every parameter's ``w * grad`` is summed over the weights of a unit *within one layer*,
the absolute value (Taylor) or the square (Fisher) taken, and the result summed over layers and batches:

- head h of block i: the q, k, v rows of the head in ``qkv`` (and biases) and its columns in ``proj``;
- q/k column j: the q and k rows at column j of every head, per head, summed over the block's heads
  (the same columns are kept in every head, so heads stay uniform);
- v column j: the v rows at column j of every head and the matching ``proj`` columns, summed over heads;
- MLP neuron: its ``fc1`` row and bias and its ``fc2`` column;
- embedding channel c: every layer that reads or writes the residual stream — patch embedding (and its
  norm), class / register / distillation tokens, position embedding, every LayerNorm (``norm_pre``,
  ``fc_norm`` included), ``qkv`` and ``fc1`` input columns, ``proj`` and ``fc2`` output rows, the
  layer-scale gains, the head(s) if any.

The embedding importance is also kept split by block (``gated``): the share from the layers of
``blocks.i.attn`` / ``blocks.i.mlp`` vanishes when that branch is removed; ``base`` is the rest (stem,
final norm, head). These 2·depth + 1 shares are the embedding's sharing ``layers``; ``coupled``
(``importance/coupled.py``) says how they are combined (default: summed).

Output: schema ``mdp.importance`` v1, the same record as the CNN scorer's: ``{"model", "provenance",
"dims": {name: {"scores", "step", "options", "align": 1, "order", "cumulative", "base", "block",
"gated": {block: cumulative}}}}`` where ``order`` ranks the units (best first), ``cumulative[k]`` = sum of
the ``options[k]`` best scores, ``base``/``gated[b]`` the shares of the same units that are always
counted / counted while block b is kept (for a per-block dim: ``base`` = ``cumulative``, gated by ``block``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from mdp_cli.artifacts import provenance
from mdp_cli.errors import MdpError
from mdp_cli.importance.coupled import DEFAULT_COUPLED, aggregate
from mdp_cli.space.vit import vit_facts
from mdp_cli.space.core import PruningSpace

SCHEMA = "mdp.importance"
VERSION = 1


def cumulative(scores: np.ndarray, options: Iterable[int], order: np.ndarray | None = None) -> list[float]:
    """Sum of the top-``o`` scores for every option size ``o`` (``order``: a ranking to use instead)."""
    scores = np.asarray(scores, dtype=float)
    if order is None:
        order = np.argsort(-scores, kind="stable")
    c = np.concatenate([[0.0], np.cumsum(scores[order])])
    return [float(c[o]) for o in options]


class _Accumulator:
    """Per-unit sums of the group terms Σ w·∂L/∂w over batches; ``criterion`` says how one batch's group
    term counts: ``taylor`` |Σ w·g| (first order), ``fisher`` (Σ w·g)² (the squared-gradient, i.e.
    empirical-Fisher approximation of the Hessian diagonal of the loss change, NViT's criterion)."""

    def __init__(self, f: Mapping[str, Any], criterion: str = "taylor"):
        if criterion not in CRITERIA:
            raise MdpError(f"unknown importance criterion {criterion!r} (known: {', '.join(CRITERIA)})")
        self.f, self.reduce = f, CRITERIA[criterion]
        E, H, D, M, L = f["embed_dim"], f["heads"], f["head_dim"], f["mlp_hidden"], f["depth"]
        self.embed = {"fixed": torch.zeros(E, dtype=torch.float64)}
        for i in range(L):
            self.embed[f"blocks.{i}.attn"] = torch.zeros(E, dtype=torch.float64)
            self.embed[f"blocks.{i}.mlp"] = torch.zeros(E, dtype=torch.float64)
        self.heads = torch.zeros(L, H, dtype=torch.float64)
        self.qk = torch.zeros(L, D, dtype=torch.float64)
        self.v = torch.zeros(L, D, dtype=torch.float64)
        self.mlp = torch.zeros(L, M, dtype=torch.float64)

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        f, r = self.f, self.reduce
        E, H, D = f["embed_dim"], f["heads"], f["head_dim"]

        def wg(p: torch.Tensor | None, shape: tuple[int, ...] = ()) -> torch.Tensor:
            """w·∂L/∂w (zeros for an absent parameter or one without a gradient)."""
            if p is None or p.grad is None:
                return torch.zeros(shape if p is None else p.shape, dtype=torch.float64)
            return (p.detach() * p.grad).double().cpu()

        def ln(norm: nn.Module) -> torch.Tensor:  # a LayerNorm's per-channel term (Identity: none)
            return wg(getattr(norm, "weight", None), (E,)) + wg(getattr(norm, "bias", None), (E,))

        def tokens(p: torch.Tensor | None) -> torch.Tensor:  # per channel, summed over the tokens
            return torch.zeros(E, dtype=torch.float64) if p is None else wg(p).reshape(-1, E).sum(0)

        fixed = self.embed["fixed"]
        pe = model.patch_embed
        fixed += r(wg(pe.proj.weight).flatten(1).sum(1)) + r(wg(pe.proj.bias, (E,)))
        fixed += r(ln(pe.norm))
        for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
            fixed += r(tokens(getattr(model, name, None)))
        fixed += r(ln(model.norm_pre)) + r(ln(model.norm)) + r(ln(model.fc_norm))
        if f["num_classes"]:
            fixed += r(wg(model.head.weight).sum(0))
            if f["distilled"]:
                fixed += r(wg(model.head_dist.weight).sum(0))
        for i, blk in enumerate(model.blocks):
            a, m = self.embed[f"blocks.{i}.attn"], self.embed[f"blocks.{i}.mlp"]
            qkv_w = wg(blk.attn.qkv.weight)  # (3·H·D, E)
            qkv_b = wg(blk.attn.qkv.bias, (3 * H * D,))
            proj_w = wg(blk.attn.proj.weight)  # (E, H·D)
            a += r(ln(blk.norm1))
            a += r(qkv_w.sum(0)) + r(proj_w.sum(1) + wg(blk.attn.proj.bias, (E,)))
            a += r(wg(getattr(blk.ls1, "gamma", None), (E,)))
            fc1_w, fc2_w = wg(blk.mlp.fc1.weight), wg(blk.mlp.fc2.weight)
            m += r(ln(blk.norm2))
            m += r(fc1_w.sum(0))
            m += r(fc2_w.sum(1) + wg(blk.mlp.fc2.bias, (E,)))
            m += r(wg(getattr(blk.ls2, "gamma", None), (E,)))

            per_unit = qkv_w.sum(1) + qkv_b  # (3·H·D,)
            q, k, v = (t.reshape(H, D) for t in per_unit.chunk(3))
            proj_hd = proj_w.sum(0).reshape(H, D)
            self.heads[i] += r(q.sum(1) + k.sum(1) + v.sum(1) + proj_hd.sum(1))
            self.qk[i] += r(q + k).sum(0)
            self.v[i] += r(v + proj_hd).sum(0)
            self.mlp[i] += r(fc1_w.sum(1) + wg(blk.mlp.fc1.bias, (fc1_w.shape[0],)) + fc2_w.sum(0))


CRITERIA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"taylor": torch.abs, "fisher": torch.square}
METHODS = {"taylor": "taylor_first_order", "fisher": "fisher_squared_grad"}


def vit_importance(
    model: nn.Module,
    data_loader: Iterable,
    space: PruningSpace,
    max_batches: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    criterion: str = "taylor",
    coupled: str = DEFAULT_COUPLED,
    **provenance_fields: Any,
) -> dict[str, Any]:
    """Importance of every dim of ``space`` over batches ``(images, labels)`` of ``data_loader``:
    ``loss_fn(outputs, labels)`` (default cross-entropy; see ``importance/objectives.py`` for label-free
    losses), ``criterion`` ``taylor`` or ``fisher`` (see ``_Accumulator``), ``coupled``: how the embedding's
    shares are combined (``importance/coupled.py``)."""
    f = vit_facts(model)
    loss_fn = loss_fn or nn.functional.cross_entropy
    model = model.to(device)
    was_training = model.training
    model.eval()  # no dropout / drop-path: the scores describe the deployed function
    acc = _Accumulator(f, criterion)
    batches = images_seen = 0
    try:
        for batch in data_loader:
            if max_batches is not None and batches >= max_batches:
                break
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise MdpError("importance needs a data loader of (images, labels) batches")
            x, y = batch[0].to(device), batch[1].to(device)
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = model(x)
                loss = loss_fn(out, y)
                loss.backward()
            acc.add(model)
            batches += 1
            images_seen += int(x.shape[0])
            if progress:
                progress(batches)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if batches == 0:
        raise MdpError("the data loader gave no batches; importance needs at least one")
    return importance_dict(space, acc, coupled=coupled, method=METHODS[criterion], batches=batches,
                           images=images_seen, **provenance_fields)


def importance_dict(space: PruningSpace, acc: _Accumulator, coupled: str = DEFAULT_COUPLED,
                    **prov: Any) -> dict[str, Any]:
    dims: dict[str, Any] = {}
    for dim in space.dims:
        if dim.name == "embed":
            total = sum(acc.embed.values()).numpy()
            order = np.argsort(-total, kind="stable")
            parts = {k: cumulative(v.numpy(), dim.options, order) for k, v in acc.embed.items()}
            layers = len(parts)  # the stem/head share and one per attention and MLP branch
            dims["embed"] = aggregate({"scores": total.tolist(), "step": dim.step, "options": list(dim.options),
                                       "align": 1, "order": order.tolist(),
                                       "cumulative": cumulative(total, dim.options, order),
                                       "base": parts.pop("fixed"), "block": None, "gated": parts}, layers, coupled)
            continue
        i = int(dim.name.split(".")[1])
        scores = {"heads": acc.heads, "qk": acc.qk, "v": acc.v, "mlp": acc.mlp}[dim.kind][i].numpy()
        order = np.argsort(-scores, kind="stable")
        cum = cumulative(scores, dim.options, order)
        dims[dim.name] = {"scores": scores.tolist(), "step": dim.step, "options": list(dim.options), "align": 1,
                          "order": order.tolist(), "cumulative": cum, "base": cum, "block": dim.block, "gated": {},
                          "layers": 1}
    return {"schema": SCHEMA, "version": VERSION, "model": space.model_name,
            "provenance": provenance(model=space.model_name, **{"method": "taylor_first_order", **prov},
                                     coupled=coupled), "dims": dims}
