"""Builders ``arch dict -> nn.Module`` by ``mdp.arch`` family name (``cnn_graph``, ``vit``, ...)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

ArchBuilder = Callable[[dict[str, Any]], nn.Module]
ARCH_BUILDERS: dict[str, ArchBuilder] = {}

# Modules whose import registers the built-in builders (imported lazily: loading needs no setup).
BUILTIN_MODULES = ("mdp_cli.modules.cnn", "mdp_cli.modules.vit", "mdp_cli.modules.swin")


def register_arch(name: str) -> Callable[[ArchBuilder], ArchBuilder]:
    def decorate(builder: ArchBuilder) -> ArchBuilder:
        ARCH_BUILDERS[name] = builder
        return builder

    return decorate


def arch_builder(name: str) -> ArchBuilder | None:
    """The builder registered for ``name`` (importing the built-in modules first), or None."""
    if name not in ARCH_BUILDERS:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    return ARCH_BUILDERS.get(name)
