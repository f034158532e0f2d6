"""Exported (pruned) model format: an architecture spec (JSON) plus safetensors weights, no pickles.

A directory holds ``arch.json`` (schema ``mdp.arch``: ``family`` and whatever that family's builder needs
to rebuild the module tree with the pruned sizes) and ``model.safetensors``. Each family registers a
builder ``arch dict -> nn.Module`` with ``mdp_cli.modules.registry.register_arch``; loading needs no pruning
code path, only those plain-PyTorch module definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mdp_cli.artifacts import atomic_path, provenance, read_json, write_json
from mdp_cli.errors import MdpError
from mdp_cli.modules.registry import ARCH_BUILDERS, arch_builder

ARCH_SCHEMA = "mdp.arch"
ARCH_VERSION = 1


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
    builder = arch_builder(str(family))
    if builder is None:
        raise MdpError(f"{directory / 'arch.json'}: unknown family {family!r} (known: {sorted(ARCH_BUILDERS)})")
    model = builder(arch)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise MdpError(f"{weights}: missing; re-run 'mdp export'")
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    return model

