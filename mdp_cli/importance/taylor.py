"""First-order Taylor importance of CNN channels from BN parameters, written as ``mdp.importance`` v1.

Per channel c of a normalisation layer (BN; LayerNorm over channels where a model has no BN, as ConvNeXt):
|γ_c·∂L/∂γ_c + β_c·∂L/∂β_c|, accumulated over batches (absolute value per batch, then summed), and summed
over every norm whose channels belong to the same (coupled) dim. A norm over a concatenation (DenseNet)
gives each part's dim the scores of that part's channels. A dim without any norm falls back to the weight
Taylor score of its producing convs/linears (|Σ w·∂L/∂w| per output channel).

Chunking: element scores are summed into units of ``align`` channels (1, or the group size of a grouped
conv), units are sorted by score, and ``cumulative[k]`` is the sum of the top units that make up option k.
For a dim shared by several residual blocks the per-block parts are kept apart (``gated``): the part from
a block's own BN vanishes when the solver removes that block. ``coupled`` (``importance/coupled.py``) says
how the scores of a dim's several norms are combined (sum, mean or sum / sqrt(count)); ``layers`` counts them.

JSON: ``{"schema": "mdp.importance", "version": 1, "model", "provenance", "dims": {name: {"scores",
"step", "options", "align", "order", "cumulative", "base", "block", "gated": {block: cumulative},
"layers"}}}``; the provenance names the ``coupled`` mode.
NaN or negative scores, all-zero scores (nothing to rank) and an ``order`` that is not a permutation are
refused on write and on read, with one line naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from mdp_cli.artifacts import is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.importance.coupled import DEFAULT_COUPLED, aggregate
from mdp_cli.space.cnn import CnnAnalysis

SCHEMA = "mdp.importance"
VERSION = 1


def bn_taylor_scores(model: nn.Module, analysis: CnnAnalysis, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: str = "cpu", loss_fn=None, criterion: str = "taylor") -> tuple[dict[str, np.ndarray], int]:
    """Per-node scores: BN nodes (and producer convs/linears as a fallback), summed over batches.
    ``loss_fn(outputs, labels)``: default cross-entropy to the labels (``importance/objectives.py`` has the
    label-free ones); ``criterion``: ``taylor`` |group term| or ``fisher`` (group term)² per batch."""
    model = model.to(device).eval()  # eval: running statistics are used and left untouched
    modules = dict(model.named_modules())
    bn_nodes = analysis.norm_nodes()
    weight_nodes = [n for n in analysis.graph.nodes if n.op in ("conv", "linear") and n.module]
    acc: dict[str, torch.Tensor] = {}
    count = 0
    reduce = torch.square if criterion == "fisher" else torch.abs
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        out = model(images.to(device))
        labels = labels.to(device)
        loss = loss_fn(out, labels) if loss_fn else nn.functional.cross_entropy(out, labels % out.shape[1])
        loss.backward()
        for n in bn_nodes:
            bn = modules[n.module]
            if bn.weight is None or bn.weight.grad is None:
                continue
            s = bn.weight * bn.weight.grad
            if getattr(bn, "bias", None) is not None and bn.bias.grad is not None:
                s = s + bn.bias * bn.bias.grad
            s = reduce(s).detach().cpu().double()
            acc[n.name] = acc.get(n.name, 0) + s
        for n in weight_nodes:
            w = modules[n.module].weight
            if w.grad is None:
                continue
            s = reduce((w * w.grad).detach().cpu().double().flatten(1).sum(1))
            acc["w:" + n.name] = acc.get("w:" + n.name, 0) + s
        count += 1
    if count == 0:
        raise MdpError("no batches to score on (empty data set?)")
    model.zero_grad(set_to_none=True)
    return {k: v.numpy() for k, v in acc.items()}, count


def importance_record(analysis: CnnAnalysis, node_scores: dict[str, np.ndarray],
                      coupled: str = DEFAULT_COUPLED) -> dict[str, dict[str, Any]]:
    """Aggregate node scores into per-dim element scores, order, cumulative and per-block parts; a dim on
    several norms (a residual width) combines their scores as ``coupled`` says (``importance/coupled.py``)."""
    dims: dict[str, dict[str, Any]] = {}
    by_dim = _norm_scores_by_dim(analysis, node_scores)
    for dim in analysis.space.dims:
        parts: dict[str | None, np.ndarray] = {}
        sources = by_dim.get(dim.name, [])
        if not sources:  # fallback: weight Taylor of the producers
            sources = [(n.name, node_scores["w:" + n.name]) for n in analysis.graph.nodes
                       if n.op in ("conv", "linear") and analysis.dim_out(n) == dim.name
                       and "w:" + n.name in node_scores and len(node_scores["w:" + n.name]) == dim.size]
        for node_name, score in sources:
            blk = analysis.node_block.get(node_name)
            part = None if blk is None or blk == dim.block else blk
            parts[part] = parts.get(part, 0) + score
        total = sum(parts.values()) if parts else np.zeros(dim.size)
        align = dim.align
        units = np.asarray(total, dtype=float).reshape(-1, align).sum(1)
        unit_order = np.argsort(-units, kind="stable")
        order = [int(u * align + j) for u in unit_order for j in range(align)]

        def cumulative(values: np.ndarray) -> list[float]:
            per_unit = np.asarray(values, dtype=float).reshape(-1, align).sum(1)[unit_order]
            csum = np.concatenate([[0.0], np.cumsum(per_unit)])
            out = [float(csum[opt // align]) for opt in dim.options]
            return list(np.maximum.accumulate(out))  # guard float noise: cumulative is non-decreasing

        base = parts.get(None, np.zeros(dim.size))
        dims[dim.name] = aggregate({
            "scores": [float(v) for v in total],
            "step": dim.step,
            "options": list(dim.options),
            "align": align,
            "order": order,
            "cumulative": cumulative(total),
            "base": cumulative(base),
            "block": dim.block,
            "gated": {blk: cumulative(v) for blk, v in parts.items() if blk is not None},
        }, len(sources), coupled)
    return dims


def _norm_scores_by_dim(analysis: CnnAnalysis, node_scores: dict[str, np.ndarray]) -> dict[str, list]:
    """dim -> [(norm node, its scores on that dim's channels)]; a norm over a concatenation feeds every part."""
    out: dict[str, list] = {}
    for n in analysis.norm_nodes():
        root = analysis.out_space.get(n.name)
        if n.name not in node_scores or root is None:
            continue
        for sub, offset, size in analysis.segments(root):
            dim = analysis.dim_of_root.get(sub)
            if dim is not None:
                out.setdefault(dim, []).append((n.name, node_scores[n.name][offset:offset + size]))
    return out


def write_importance(path: str | Path, model_name: str, dims: dict[str, dict[str, Any]], **provenance_fields: Any) -> None:
    _check_dims(dims, str(path))
    write_json(path, {"schema": SCHEMA, "version": VERSION, "model": model_name,
                      "provenance": provenance(model=model_name, **provenance_fields), "dims": dims})


def read_importance(path: str | Path) -> dict[str, Any]:
    data = read_json(path, SCHEMA, VERSION)
    if not isinstance(data.get("dims"), dict) or not data["dims"]:
        raise SchemaError(f"{path}: field 'dims' must be a non-empty object of dim name -> scores; re-run 'mdp score'")
    _check_dims(data["dims"], str(path))
    return data


def _check_dims(dims: dict[str, Any], source: str) -> None:
    for name, rec in dims.items():
        if not isinstance(rec, dict):
            raise SchemaError(f"{source}: dims.{name} must be an object with 'scores', 'options', 'cumulative'")
        for field in ("scores", "cumulative"):
            values = rec.get(field)
            if not isinstance(values, list):
                raise SchemaError(f"{source}: dims.{name}.{field} must be a list of numbers")
            for k, v in enumerate(values):
                if not is_finite_number(v) or (isinstance(v, float) and math.isnan(v)):
                    raise SchemaError(f"{source}: dims.{name}.{field}[{k}] is {v!r}; scores must be finite "
                                      "(NaN usually means the loss diverged; re-run 'mdp score')")
                if v < 0:
                    raise SchemaError(f"{source}: dims.{name}.{field}[{k}] is negative ({v})")
        options = rec.get("options", rec["cumulative"] and list(range(1, len(rec["cumulative"]) + 1)))
        if not isinstance(options, list) or not all(isinstance(o, int) and not isinstance(o, bool) for o in options):
            raise SchemaError(f"{source}: dims.{name}.options must be a list of widths (integers)")
        cum = rec["cumulative"]
        if len(cum) != len(options):
            raise SchemaError(f"{source}: dims.{name}.cumulative needs one value per option")
        if any(b < a - 1e-12 * max(1.0, abs(a)) for a, b in zip(cum, cum[1:])):
            raise SchemaError(f"{source}: dims.{name}.cumulative decreases; it must be non-decreasing")
        # base and gated parts feed the problem as they are: the same rules as cumulative
        gated = rec.get("gated", {})
        if not isinstance(gated, dict):
            raise SchemaError(f"{source}: dims.{name}.gated must map block names to cumulative lists")
        for field, values in [("base", rec.get("base", cum))] + [(f"gated.{b}", v) for b, v in gated.items()]:
            if (not isinstance(values, list) or len(values) != len(options)
                    or not all(is_finite_number(v) and v >= 0 for v in values)):
                raise SchemaError(f"{source}: dims.{name}.{field} must be {len(options)} finite non-negative "
                                  "numbers (one per option); re-run 'mdp score'")
        layers = rec.get("layers", 1)
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
            raise SchemaError(f"{source}: dims.{name}.layers must be the number of layers sharing the dim (an "
                              "integer >= 0); re-run 'mdp score'")
        order = rec.get("order")
        if order is not None and (not isinstance(order, list) or sorted(
                o if isinstance(o, int) and not isinstance(o, bool) else -1 for o in order) != list(range(len(rec["scores"])))):
            raise SchemaError(f"{source}: dims.{name}.order must rank each unit once (a permutation of 0..n-1 "
                              f"for its {len(rec['scores'])} scores); re-run 'mdp score'")
    if dims and all(not any(rec["scores"]) for rec in dims.values()):
        # Nothing to rank: every width would look free to cut, and the solver would prune to the minimum.
        raise SchemaError(f"{source}: every importance score is zero (no gradient reached the scored layers: "
                          "a model with zero-initialised or frozen weights, or a loss that does not depend on "
                          "them); score a trained model (--pretrained) on real data ('mdp score')")


# ---------------------------------------------------------------------------------------------------------
# Data for scoring: one small function so the shared data pipeline can replace it.
# ---------------------------------------------------------------------------------------------------------


def scoring_batches(data: str, resolution: int, batch_size: int, batches: int, seed: int = 0,
                    num_classes: int = 1000, progress: bool | None = None, model: nn.Module | None = None):
    """Yield ``batches`` (images, labels) batches from a data spec of mdp_cli.data (``builtin:NAME`` or a
    directory with train/val splits), a flat ImageFolder directory (one sub-folder per class), or
    ``synthetic`` (random-noise images with random labels: smoke tests only, the scores mean nothing).

    ``progress``: one tqdm bar on stderr over the batches (None: only when stderr is a terminal; False: never).
    Both families score through here, so this is the scoring stage's one bar. ``model``: normalise images
    with its mean/std (timm's pretrained config, e.g. 0.5/0.5 for EfficientNet-Lite0) instead of ImageNet's.
    """
    from tqdm import tqdm

    source = _scoring_batches(data, resolution, batch_size, batches, seed, num_classes, model)
    with tqdm(source, total=batches, desc="score", unit="batch", leave=False, dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        yield from bar


def _scoring_batches(data: str, resolution: int, batch_size: int, batches: int, seed: int, num_classes: int,
                     model: nn.Module | None):
    g = torch.Generator().manual_seed(seed)
    if data == "synthetic":
        for _ in range(batches):
            yield (torch.randn(batch_size, 3, resolution, resolution, generator=g),
                   torch.randint(0, num_classes, (batch_size,), generator=g))
        return
    if data.startswith("builtin:") or (Path(data) / "train").is_dir():
        # The shared data pipeline (mdp_cli.data): built-in real data sets and train/val trees.
        from mdp_cli.data import make_loader

        loader = make_loader(data, "train", model, batch_size=batch_size, train=True, augment=False,
                             img_size=resolution, seed=seed)
        for k, batch in enumerate(loader):
            if k >= batches:
                break
            yield batch
        return
    from torchvision import datasets, transforms

    root = Path(data)
    if not root.is_dir():
        raise MdpError(f"--data {data}: not a directory (expected an ImageFolder: one sub-folder per class) "
                       "or 'synthetic'")
    from mdp_cli.data import data_config

    norm = data_config(model, resolution) if model is not None else {"mean": (0.485, 0.456, 0.406),
                                                                        "std": (0.229, 0.224, 0.225)}
    tf = transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.ToTensor(),
                             transforms.Normalize(list(norm["mean"]), list(norm["std"]))])
    try:
        from mdp_cli.data import read_image  # a corrupt image is one line naming the file

        dataset = datasets.ImageFolder(str(root), transform=tf, loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise MdpError(f"--data {data}: {str(exc).splitlines()[0]}") from None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, num_workers=0)
    for k, batch in enumerate(loader):
        if k >= batches:
            break
        yield batch
