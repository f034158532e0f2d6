"""Dense model creation by name: torchvision and timm families, short aliases, local pretrained weights.

Names are the interface: ``resnet50`` (torchvision), ``deit_base`` (alias of timm's
``deit_base_patch16_224``), or any timm model name. Weights never come from a hub: ``pretrained`` is a
local file (safetensors, or a torch checkpoint read with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdp_cli.errors import MdpError

ALIASES = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "deit_small_distilled": "deit_small_distilled_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def create_model(name: str, pretrained: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Create a dense model; ``overrides`` (num_classes, img_size, ...) go to the family's constructor."""
    from mdp_cli.model_names import build_named_model, say_note_once  # tv:/timm: prefixes, FILE.py:factory

    model, resolved = build_named_model(canonical_name(name), **overrides)
    say_note_once(resolved)
    if pretrained is not None:
        load_weights(model, pretrained)
    model.eval()
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from safetensors or a torch file (weights_only: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise MdpError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: truncated or corrupted header or data
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise MdpError(f"{path}: not a readable safetensors file ({reason}); the file is corrupt or "
                           "truncated: write it again (re-run the stage that made it)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors name what was refused; keep the message on one line
        raise MdpError(f"{path}: cannot read as safetensors or weights-only torch checkpoint ({exc})".replace("\n", " ")) from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise MdpError(f"{path}: expected a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise MdpError(
            f"{path}: weights do not fit the model (missing {result.missing_keys[:3]}..., "
            f"unexpected {result.unexpected_keys[:3]}...); check --model and --num-classes"
        )
