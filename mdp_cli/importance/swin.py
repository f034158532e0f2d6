"""Importance for the dims of a Swin space: per block, the group terms Σ w·∂L/∂w of heads (q, k, v rows
and biases, proj columns, relative-position bias column), q/k columns, v columns and MLP neurons, as in
``importance/vit.py`` (|·| for ``taylor``, (·)² for ``fisher``), summed over batches. The record has the
ViT/CNN ``mdp.importance`` layout (every dim per block: ``base`` = ``cumulative``, one layer, so
``score.coupled`` changes nothing here and is only recorded)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from mdp_cli.artifacts import provenance
from mdp_cli.errors import MdpError
from mdp_cli.importance.coupled import DEFAULT_COUPLED, coupled_weight
from mdp_cli.importance.vit import CRITERIA, METHODS, SCHEMA, VERSION, cumulative
from mdp_cli.space.core import PruningSpace
from mdp_cli.space.swin import swin_facts


def swin_importance(model: nn.Module, batches: Iterable, space: PruningSpace, loss_fn: Callable | None = None,
                    device: str = "cpu", criterion: str = "taylor", coupled: str = DEFAULT_COUPLED,
                    **provenance_fields: Any) -> dict[str, Any]:
    f = swin_facts(model)
    if criterion not in CRITERIA:
        raise MdpError(f"unknown importance criterion {criterion!r} (known: {', '.join(CRITERIA)})")
    r, loss_fn = CRITERIA[criterion], loss_fn or nn.functional.cross_entropy
    model = model.to(device).eval()
    acc: dict[str, torch.Tensor] = {}
    count = images = 0

    def add(name: str, value: torch.Tensor) -> None:
        acc[name] = acc.get(name, 0) + r(value)

    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                out = model(x.to(device))
                loss_fn(out, y.to(device)).backward()
            with torch.no_grad():
                for s, stage in enumerate(f["stages"]):
                    for j, b in enumerate(stage["blocks"]):
                        blk, p = model.layers[s].blocks[j], f"stages.{s}.blocks.{j}."
                        H, D = b["heads"], b["head_dim"]

                        def wg(t):
                            return (t.detach() * t.grad).double().cpu() if t is not None and t.grad is not None \
                                else torch.zeros(() if t is None else t.shape, dtype=torch.float64)

                        per_unit = wg(blk.attn.qkv.weight).sum(1) + (wg(blk.attn.qkv.bias) if f["qkv_bias"] else 0)
                        q, k, v = (t.reshape(H, D) for t in per_unit.chunk(3))
                        proj = wg(blk.attn.proj.weight).sum(0).reshape(H, D)
                        bias = wg(blk.attn.relative_position_bias_table).sum(0)
                        add(p + "attn.heads", q.sum(1) + k.sum(1) + v.sum(1) + proj.sum(1) + bias)
                        acc[p + "attn.qk"] = acc.get(p + "attn.qk", 0) + r(q + k).sum(0)
                        acc[p + "attn.v"] = acc.get(p + "attn.v", 0) + r(v + proj).sum(0)
                        add(p + "mlp.hidden", wg(blk.mlp.fc1.weight).sum(1) + wg(blk.mlp.fc1.bias)
                            + wg(blk.mlp.fc2.weight).sum(0))
            count += 1
            images += int(x.shape[0])
    finally:
        model.zero_grad(set_to_none=True)
    if count == 0:
        raise MdpError("the data loader gave no batches; importance needs at least one")
    dims = {}
    for dim in space.dims:
        scores = acc[dim.name].numpy()
        order = np.argsort(-scores, kind="stable")
        cum = cumulative(scores, dim.options, order)
        dims[dim.name] = {"scores": scores.tolist(), "step": dim.step, "options": list(dim.options), "align": 1,
                          "order": order.tolist(), "cumulative": cum, "base": cum, "block": dim.block, "gated": {},
                          "layers": 1}
    coupled_weight(coupled, 1)  # an unknown mode is refused here too
    prov = provenance(model=space.model_name, method=METHODS[criterion], batches=count, images=images,
                      coupled=coupled, **provenance_fields)
    return {"schema": SCHEMA, "version": VERSION, "model": space.model_name, "provenance": prov, "dims": dims}
