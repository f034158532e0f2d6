"""Registry of model families (``Family`` implementations), looked up by name or by model name.

A family is one module that defines a ``Family`` subclass and registers an instance::

    from mdp_cli.families import Family, register_family

    @register_family
    class MyFamily(Family):
        name = "mine"
        ...

The built-in families (``cnn``, ``vit``) are imported on first use; a third-party family registers
itself when its module is imported. ``family_for_model`` asks the families in ``priority`` order.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from mdp_cli.errors import MdpError
from mdp_cli.families.base import Discovered, Family

__all__ = ["Discovered", "Family", "all_families", "family_for_model", "family_of", "get_family", "register_family",
           "unregister_family"]

BUILTIN = ("mdp_cli.families.vit", "mdp_cli.families.swin", "mdp_cli.families.cnn")
_REGISTRY: dict[str, Family] = {}
_loaded = False
F = TypeVar("F", bound=type)


def register_family(cls: F) -> F:
    """Class decorator: register an instance of a ``Family`` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError(f"{cls!r} is not a Family subclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"model family {cls.name!r} registered twice ({type(existing).__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_family(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def all_families() -> list[Family]:
    """Registered families, in the order they are asked to recognise a model."""
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda f: (f.priority, f.name))


def get_family(name: str) -> Family:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MdpError(f"unknown model family {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def family_for_model(model: str) -> Family:
    """The first family (by priority) that recognises ``model``."""
    for family in all_families():
        if family.recognises(model):
            return family
    raise MdpError(f"model {model!r}: no model family takes it (families: {', '.join(f.name for f in all_families())})")


def family_of(model: str) -> str:
    """Name of the family of ``model``."""
    return family_for_model(model).name
