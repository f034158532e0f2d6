"""Exported (pruned) model format: an architecture spec (JSON) plus safetensors weights, no pickles.

A directory holds ``arch.json`` (schema ``mdp.arch``: ``family`` and whatever that family's builder needs
to rebuild the module tree with the pruned sizes) and ``model.safetensors``. Each family registers a
builder ``arch dict -> nn.Module`` with ``@register_family``; loading needs no pruning code path, only
these plain-PyTorch module definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from mdp_cli.artifacts import atomic_path, provenance, read_json, write_json
from mdp_cli.errors import MdpError

ARCH_SCHEMA = "mdp.arch"
ARCH_VERSION = 1
FamilyBuilder = Callable[[dict[str, Any]], nn.Module]
FAMILIES: dict[str, FamilyBuilder] = {}


def register_family(name: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    def decorate(builder: FamilyBuilder) -> FamilyBuilder:
        FAMILIES[name] = builder
        return builder

    return decorate


def save_exported(directory: str | Path, model: nn.Module, arch: dict[str, Any], **provenance_fields: Any) -> None:
    """Write weights first, then the spec, each atomically: a directory with a spec always has its weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(
        directory / "arch.json",
        {"schema": ARCH_SCHEMA, "version": ARCH_VERSION, "provenance": provenance(**provenance_fields), **arch},
    )


def load_exported(directory: str | Path) -> nn.Module:
    from safetensors.torch import load_file

    directory = Path(directory)
    arch = read_json(directory / "arch.json", ARCH_SCHEMA, ARCH_VERSION)
    family = arch.get("family")
    if family not in FAMILIES:
        _import_family_modules()
    if family not in FAMILIES:
        raise MdpError(f"{directory / 'arch.json'}: unknown family {family!r} (known: {sorted(FAMILIES)})")
    model = FAMILIES[family](arch)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise MdpError(f"{weights}: missing; re-run 'mdp export'")
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    return model


def _import_family_modules() -> None:
    # Families register on import; import the known ones lazily so loading needs no explicit setup.
    import importlib

    for module in ("mdp_cli.export.cnn", "mdp_cli.export.vit"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            pass
