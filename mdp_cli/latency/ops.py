"""Registry of op builders: how to make a runnable module for a latency term at given sizes.

A builder takes the term's fixed ``context`` (kernel, stride, feature map, tokens, ...), the ``sizes`` of
its dims keyed by role (e.g. ``{"cin": 64, "cout": 128}``), the ``batch`` and returns ``(module, input)``:
the module runs exactly what the exported model runs for that term, on an input of the right shape.
Family modules register their ops with ``@register_op("name")``.
"""

from __future__ import annotations

from typing import Any, Callable

OpBuilder = Callable[[dict[str, Any], dict[str, int], int], tuple[Any, Any]]
OPS: dict[str, OpBuilder] = {}


def register_op(name: str) -> Callable[[OpBuilder], OpBuilder]:
    def decorate(builder: OpBuilder) -> OpBuilder:
        if name in OPS and OPS[name] is not builder:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = builder
        return builder

    return decorate


# The built-in families' op modules, imported on first use so that a caller need not know which to import.
BUILTIN_OP_MODULES = ("mdp_cli.latency.cnn_ops", "mdp_cli.latency.vit_ops", "mdp_cli.latency.swin_ops")


def get_op(name: str) -> OpBuilder:
    if name not in OPS:
        import importlib

        for module in BUILTIN_OP_MODULES:
            importlib.import_module(module)
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no latency op builder named {name!r} (known: {sorted(OPS)})") from None
