"""What an exported model expects: its input transform and class count, read from ``arch.json``; head swaps.

An export runs at the resolution it was pruned (and timed) at, with the normalisation of the model it came
from. ``arch.json`` records the resolution (CNN ``input_shape`` [C, H, W], ViT ``img_size`` [H, W], or the
export provenance's ``resolution``); mean/std come from an explicit ``data_config`` block when the exporter
writes one, else from the source model's defaults (timm's pretrained config; ImageNet for torchvision).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.modules.cnn import FAMILY as CNN_FAMILY


def source_model_name(arch: Mapping[str, Any], prov: Mapping[str, Any]) -> str | None:
    name = arch.get("model") or prov.get("source_model") or prov.get("model")
    return str(name) if name else None


def default_data_config(model_name: str | None) -> dict[str, Any]:
    """The transform a dense ``model_name`` is evaluated with (no model built): timm's config, else ImageNet."""
    from timm.data import resolve_data_config

    if model_name:
        from timm.models import get_pretrained_cfg

        from mdp_cli.models import canonical_name

        cfg = get_pretrained_cfg(canonical_name(model_name))
        if cfg is not None:
            return resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    return resolve_data_config({}, pretrained_cfg={"input_size": (3, 224, 224)})


def export_data_config(arch: Mapping[str, Any], prov: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(timm data config, where each part came from) for an exported model."""
    name = source_model_name(arch, prov)
    config = default_data_config(name)
    norm_from = f"defaults of {name}" if name else "ImageNet defaults (source model unknown)"
    if isinstance(arch.get("data_config"), Mapping):
        config.update({k: tuple(v) if isinstance(v, list) else v for k, v in arch["data_config"].items()
                       if k in config})
        norm_from = "arch.json data_config"
    size, size_from = None, None
    if isinstance(arch.get("data_config"), Mapping) and "input_size" in arch["data_config"]:
        size, size_from = tuple(arch["data_config"]["input_size"]), "arch.json data_config"
    elif isinstance(arch.get("input_shape"), list) and len(arch["input_shape"]) == 3:
        size, size_from = tuple(int(v) for v in arch["input_shape"]), "arch.json input_shape"
    elif isinstance(arch.get("img_size"), list):
        size, size_from = (int(arch.get("in_chans", 3)), *(int(v) for v in arch["img_size"])), "arch.json img_size"
    elif prov.get("resolution"):
        size, size_from = (3, int(prov["resolution"]), int(prov["resolution"])), "arch.json provenance resolution"
    if size is not None:
        config["input_size"] = size
    else:
        size_from = f"not recorded, {config['input_size'][1]} px default of {name or 'ImageNet models'}"
    return config, f"size from {size_from}, mean/std from {norm_from}"


def classifier_layers(module: nn.Module, arch: Mapping[str, Any]) -> list[str]:
    """Paths of an exported model's classifier layer(s)."""
    family = arch.get("family")
    if family == "vit":
        return ["head.head"] + (["head.head_dist"] if arch.get("distilled") else [])
    if family == CNN_FAMILY:
        linears = [n["name"] for n in arch.get("nodes", []) if n["op"] == "linear"]
        return [f"layers.{linears[-1]}"] if linears else []
    from mdp_cli.models import classifier_paths

    return classifier_paths(module)


def export_num_classes(module: nn.Module, arch: Mapping[str, Any]) -> int | None:
    layers = classifier_layers(module, arch)
    if not layers:
        return None
    layer = module.get_submodule(layers[0])
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def replace_export_head(module: nn.Module, arch: dict[str, Any], num_classes: int) -> int:
    """New ``num_classes`` classifier(s) (random init) in place, and the same in ``arch``; returns the old count."""
    layers = classifier_layers(module, arch)
    if not layers:
        raise MdpError(f"cannot find the classifier of this {arch.get('family')} export to give it "
                       f"{num_classes} classes")
    old = export_num_classes(module, arch)
    for path in layers:
        layer = module.get_submodule(path)
        if not isinstance(layer, nn.Linear):
            raise MdpError(f"{path}: classifier is a {type(layer).__name__}, only Linear heads can be replaced")
        parent, _, leaf = path.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf,
                nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None))
    if arch.get("family") == CNN_FAMILY:
        last = layers[0].removeprefix("layers.")
        for nodes in (arch["nodes"], getattr(module, "nodes", [])):
            for node in nodes:
                if node["name"] == last:
                    node["attrs"] = {**node["attrs"], "out_features": num_classes}
    if "num_classes" in arch:
        arch["num_classes"] = num_classes
    return int(old) if old is not None else -1
