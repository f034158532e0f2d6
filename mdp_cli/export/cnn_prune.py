"""Cut a physically smaller CNN out of a dense one: sliced conv/BN/linear weights, removed blocks dropped.

Input: the dense model, its ``CnnAnalysis`` (space discovery), the chosen size of each dim, the kept flag
of each block, and for each dim the channel order (most important first; from the importance JSON).
Output: a ``GraphNet`` (plain PyTorch, see modules/cnn.py) and its arch dict. A removed block's add is
replaced by its skip input, so the first block of a stage, when removed, leaves its downsample path.

Every tensor with a channel axis is sliced by the kept channels of that axis's space: a producer's output
(conv/linear weight axis 0 and bias), a consumer's input (weight axis 1; for a linear after a flatten, the
H*W features of each kept channel), norms (BN, LayerNorm), layer-scale parameters. A concatenation's kept
channels are its parts' kept channels, each shifted by the part's offset.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.modules.cnn import FAMILY, GraphNet
from mdp_cli.space.cnn import CnnAnalysis, _grouped_kind


def _keep_indices(analysis: CnnAnalysis, choice: Mapping[str, int],
                  order: Mapping[str, Sequence[int]] | None) -> dict[int, torch.Tensor]:
    keep: dict[int, torch.Tensor] = {}
    known = set(analysis.dim_of_root.values())
    unknown = set(choice) - known
    if unknown:
        raise MdpError(f"solution names dims {sorted(unknown)[:3]} that the model does not have (wrong --model?)")
    for root, name in analysis.dim_of_root.items():
        full = analysis.root_size[root]
        size = int(choice.get(name, full))
        align = analysis.root_align.get(root, 1)
        if not 0 < size <= full or size % align:
            raise MdpError(f"dim {name}: size {size} is not in 1..{full} or not a multiple of its group size {align}")
        ranking = list(order[name]) if order and name in order else list(range(full))
        if sorted(ranking) != list(range(full)):
            raise MdpError(f"dim {name}: channel order must be a permutation of 0..{full - 1}")
        if align > 1:  # keep whole groups, in the ranking's group order
            groups = list(dict.fromkeys(i // align for i in ranking))[: size // align]
            picked = [g * align + j for g in groups for j in range(align)]
        else:
            picked = ranking[:size]
        keep[root] = torch.tensor(sorted(picked), dtype=torch.long)
    return keep


def prune_cnn(
    model: nn.Module,
    analysis: CnnAnalysis,
    choice: Mapping[str, int],
    kept: Mapping[str, bool] | None = None,
    order: Mapping[str, Sequence[int]] | None = None,
) -> tuple[GraphNet, dict[str, Any]]:
    """Build the pruned plain-PyTorch model for ``choice`` (dim -> size) and ``kept`` (block -> bool)."""
    kept = dict(kept or {})
    blocks = {b.name: b for b in analysis.blocks}
    unknown = set(kept) - set(blocks)
    if unknown:
        raise MdpError(f"solution names blocks {sorted(unknown)[:3]} that the model does not have")
    dropped: set[str] = set()
    alias: dict[str, str] = {}
    for name, keep_it in kept.items():
        if keep_it:
            continue
        blk = blocks[name]
        if not blk.removable:
            raise MdpError(f"block {name} cannot be removed (its inner values are used elsewhere)")
        dropped.update(blk.branch)
        dropped.add(blk.add)
        alias[blk.add] = blk.skip_input
    keep = _keep_indices(analysis, choice, order)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    def channels(root: int | None) -> torch.Tensor | None:
        """Kept channel indices of a space (None: all kept); a concatenation's are its parts', shifted."""
        if root in keep:
            return keep[root]
        if root not in analysis.parts:
            return None
        pieces, pruned = [], False
        for sub, offset, size in analysis.segments(root):
            idx = keep.get(sub)
            pruned = pruned or idx is not None
            pieces.append((idx if idx is not None else torch.arange(size)) + offset)
        return torch.cat(pieces) if pruned else None

    def width(root: int | None) -> int:
        idx = channels(root)
        return len(idx) if idx is not None else analysis.root_size[root]

    def repeated(idx: torch.Tensor | None, times: int) -> torch.Tensor | None:
        if idx is None or times == 1:
            return idx
        return (idx[:, None] * times + torch.arange(times)[None, :]).flatten()

    modules = dict(model.named_modules())
    nodes: list[dict[str, Any]] = []
    state: dict[str, torch.Tensor] = {}
    for n in analysis.graph.nodes:
        if n.name in dropped:
            continue
        attrs = dict(n.attrs)
        inputs = [resolve(i) for i in n.inputs]
        out_root = analysis.out_space.get(n.name)
        in_root = analysis.out_space.get(n.inputs[0]) if n.inputs else None
        out_idx = channels(out_root)
        in_idx = channels(in_root)
        prefix = f"layers.{n.name}."
        if n.op == "conv":
            conv = modules[n.module]
            w = conv.weight.detach()
            kind = _grouped_kind(n)
            if kind == "grouped":
                per_group = attrs["in_channels"] // attrs["groups"]
                attrs["in_channels"] = attrs["out_channels"] = width(out_root)
                attrs["groups"] = attrs["out_channels"] // per_group
                if out_idx is not None:
                    w = w[out_idx]
            else:
                attrs["in_channels"], attrs["out_channels"] = width(in_root), width(out_root)
                if out_idx is not None:
                    w = w[out_idx]
                if in_idx is not None and kind == "dense":
                    w = w[:, in_idx]
            state[prefix + "weight"] = w.clone()
            if conv.bias is not None:
                b = conv.bias.detach()
                state[prefix + "bias"] = (b[out_idx] if out_idx is not None else b).clone()
        elif n.op in ("bn", "ln2d", "layernorm"):
            norm = modules[n.module]
            if n.op == "bn":
                attrs["num_features"] = width(out_root)
            else:
                attrs["normalized_shape"] = [width(out_root)]
            for key, value in norm.state_dict().items():
                value = value.detach()
                if value.dim() == 1 and out_idx is not None:
                    value = value[out_idx]
                state[prefix + key] = value.clone()
        elif n.op == "linear":
            fc = modules[n.module]
            mult = analysis.repeat.get(n.inputs[0], 1)
            attrs["in_features"] = width(in_root) * mult
            attrs["out_features"] = width(out_root)
            w = fc.weight.detach()
            cols = repeated(in_idx, mult)
            if cols is not None:
                w = w[:, cols]
            if out_idx is not None:
                w = w[out_idx]
            state[prefix + "weight"] = w.clone()
            if fc.bias is not None:
                b = fc.bias.detach()
                state[prefix + "bias"] = (b[out_idx] if out_idx is not None else b).clone()
        elif n.op == "scale":
            param = getattr(modules[n.module], n.attrs["param"]).detach().reshape(n.attrs["param_shape"])
            axis = len(n.attrs["param_shape"]) - len(n.shape) + analysis.axis[n.name]
            if out_idx is not None and 0 <= axis and param.shape[axis] > 1:
                param = param.index_select(axis, out_idx)
            attrs["param_shape"] = list(param.shape)
            state[prefix + "weight"] = param.clone()
        nodes.append({"name": n.name, "op": n.op, "inputs": inputs, "attrs": attrs})
    net = GraphNet(nodes)
    net.load_state_dict(state, strict=True)
    net.eval()
    widths = {name: width(root) for root, name in analysis.dim_of_root.items()}
    arch = {
        "family": FAMILY,
        "model": analysis.space.model_name,
        "input_shape": list(analysis.graph.input_shape),
        "nodes": nodes,
        "widths": widths,
        "blocks": {b.name: bool(kept.get(b.name, True)) for b in analysis.blocks if b.removable},
    }
    return net, arch


def model_stats(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """Parameters and multiply-accumulates (convs and linears) at batch 1."""
    macs = 0

    def conv_hook(module, _inp, out):
        nonlocal macs
        kh, kw = module.kernel_size
        macs += int(np.prod(out.shape[1:])) * (module.in_channels // module.groups) * kh * kw

    def fc_hook(module, _inp, out):
        nonlocal macs
        macs += module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(fc_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return {"params": sum(p.numel() for p in model.parameters()), "macs": macs, "flops": 2 * macs}
