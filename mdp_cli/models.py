"""Dense model creation by name: torchvision and timm families, short aliases, local pretrained weights.

Names are the interface: ``resnet50`` (torchvision), ``deit_base`` (alias of timm's
``deit_base_patch16_224``), or any timm model name. Weights never come from a hub: ``pretrained`` is a
local file (safetensors, or a torch checkpoint read with ``weights_only=True``) or ``builtin:NAME``
(``mdp_cli.weights``). The classifier size follows the checkpoint unless ``num_classes`` is given, so a
10-class ResNet-18 loads with no flag; a checkpoint that does not fit is one error line naming both shapes.
Every model gets ``mdp_weights``: one line saying where its weights came from, for the stages to print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdp_cli.errors import MdpError
from mdp_cli.weights import describe_weights, read_state_dict, weights_file

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


def create_model(name: str, pretrained: str | Path | None = None, *, replace_head: bool = False,
                 **overrides: Any) -> nn.Module:
    """Create a dense model; ``overrides`` (num_classes, img_size, ...) go to the family's constructor.

    ``pretrained``: a weights file or ``builtin:NAME``. Without ``num_classes`` the head takes the checkpoint's
    class count. With a ``num_classes`` the checkpoint does not have, ``replace_head=True`` loads everything
    but the classifier and keeps a new, randomly initialised head (finetuning); otherwise that is an error.
    """
    from mdp_cli.model_names import build_named_model, say_note_once  # tv:/timm: prefixes, FILE.py:factory

    model, resolved = build_named_model(canonical_name(name), **overrides)
    say_note_once(resolved)
    if pretrained is not None:
        load_pretrained(model, name, pretrained, overrides.get("num_classes"), replace_head)
    else:
        model.mdp_weights = describe_weights(None)
    model.eval()
    return model


# ------------------------------------------------------------------------------------------- weights

def classifier_paths(model: nn.Module) -> list[str]:
    """Module paths of the classifier layer(s): timm's ``get_classifier()``, else torchvision's fc/classifier/head.

    A classifier given as a container (torchvision's ``classifier = Sequential(Dropout, Linear)``) resolves to its
    last Linear/Conv2d. Distilled DeiTs have two heads (``head``, ``head_dist``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    heads: list[nn.Module] = []
    if hasattr(model, "get_classifier"):
        found = model.get_classifier()
        heads = list(found) if isinstance(found, (tuple, list)) else [found]
    else:
        for attr in ("fc", "classifier", "head", "heads"):
            if isinstance(getattr(model, attr, None), nn.Module):
                heads = [getattr(model, attr)]
                break
    paths = []
    for head in heads:
        layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if layers and id(layers[-1]) in names:
            paths.append(names[id(layers[-1])])
    return paths


def set_num_classes(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a new classifier with ``num_classes`` outputs (timm's reset_classifier, else a new layer)."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    for path in classifier_paths(model):
        old = model.get_submodule(path)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                            bias=old.bias is not None)
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)


def load_pretrained(model: nn.Module, name: str, spec: str | Path, num_classes: int | None = None,
                    replace_head: bool = False) -> str:
    """Load ``spec`` (file or builtin:NAME) into ``model``, fitting the head; sets and returns ``mdp_weights``."""
    path = weights_file(spec, name)
    state = read_state_dict(path)
    note, new_heads = "", []
    heads = [p for p in classifier_paths(model) if f"{p}.weight" in state]
    if heads:
        key = f"{heads[0]}.weight"
        have, want = state[key].shape, model.get_submodule(heads[0]).weight.shape
        if have[0] != want[0] and have[1:] == want[1:]:
            if num_classes is None:  # the checkpoint says how many classes the model has
                set_num_classes(model, int(have[0]))
                note = f", {have[0]} classes from the checkpoint"
            elif replace_head:
                state = {k: v for k, v in state.items() if not any(k.startswith(f"{p}.") for p in heads)}
                new_heads = heads
                note = f", new {num_classes}-class head (random init) replaces the checkpoint's {have[0]}-class head"
            else:
                raise MdpError(f"--pretrained {spec}: {key}: checkpoint {list(have)}, model {list(want)}; the "
                               f"checkpoint has {have[0]} classes: drop --num-classes {num_classes} (or finetune, "
                               f"which replaces the head)")
    _load_exact(model, state, spec, name, new_heads)
    model.mdp_weights = describe_weights(spec, path=path) + note
    return model.mdp_weights


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], spec: str | Path, name: str,
                new_heads: list[str] = ()) -> None:
    """Every tensor present with its shape, or one line naming the first that differs (both shapes).

    ``new_heads``: classifier paths that keep their fresh initialisation (absent from ``state`` on purpose).
    """
    own = model.state_dict()
    head_keys = {f"{p}.{t}" for p in classifier_paths(model) for t in ("weight", "bias")}
    differ = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if differ:
        # A body tensor that differs says more (wrong --model) than the head (class count), so it comes first.
        key = sorted(differ, key=lambda k: k in head_keys)[0]
        value = state[key]
        more = f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""
        if key in head_keys and len(differ) <= 2:
            hint = f"pass --num-classes {value.shape[0]} or fix --model"
        elif "pos_embed" in key:
            hint = "the checkpoint was made at another input size (--img-size / resolution)"
        else:
            hint = f"the checkpoint is not a {name} (fix --model)"
        raise MdpError(f"--pretrained {spec}: {key}: checkpoint {list(value.shape)}, model "
                       f"{list(own[key].shape)}{more}; {hint}")
    # BatchNorm's batch counter is bookkeeping that some exporters leave out.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")
               and not any(k.startswith(f"{p}.") for p in new_heads)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} model tensors missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"] if unexpected else []
        raise MdpError(f"--pretrained {spec}: does not fit {name}: {', '.join(parts)}; fix --model or the weights file")
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into an already built model (exact fit, no head changes)."""
    _load_exact(model, read_state_dict(weights_file(path)), path, type(model).__name__)
