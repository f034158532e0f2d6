"""Model names → dense models: torchvision, timm, or the user's own factory.

Accepted forms:

- ``tv:resnet18`` / ``torchvision:resnet18``: a torchvision classification model;
- ``timm:resnet18``: a timm model;
- ``resnet18``: whichever library knows it; when both do, torchvision's is taken and ``resolve_model_name``
  returns a note saying so (printed once by ``create_model``);
- ``path/to/file.py:factory``: ``factory`` from that file (a path ending in ``.py`` or containing a slash);
- ``package.module:factory``: ``factory`` from an importable module.

A factory is any callable returning an ``nn.Module``; keyword overrides (``num_classes``...) are passed only
if its signature accepts them, otherwise naming one is an error. Random init: weights come separately.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from mdp_cli.errors import MdpError

TORCHVISION_PREFIXES = ("tv:", "torchvision:")
TIMM_PREFIX = "timm:"


@dataclasses.dataclass(frozen=True)
class ModelName:
    library: str  # torchvision | timm | factory
    name: str  # the library's model name, or "<source>:<factory>" for a factory
    note: str | None = None  # said to the user when a plain name was ambiguous


def _torchvision_names() -> set[str]:
    import torchvision.models as tvm

    return set(tvm.list_models(module=tvm))


def _is_factory_spec(name: str) -> bool:
    if ":" not in name or name.startswith(TORCHVISION_PREFIXES + (TIMM_PREFIX,)):
        return False
    source = name.rsplit(":", 1)[0]
    return source.endswith(".py") or "/" in source or "\\" in source or source.replace(".", "").replace("_", "").isalnum()


def resolve_model_name(name: str) -> ModelName:
    """Which library (or factory) ``name`` means; an unknown name is a one-line error."""
    if name.startswith(TORCHVISION_PREFIXES):
        bare = name.split(":", 1)[1]
        if bare not in _torchvision_names():
            raise MdpError(f"--model {name}: torchvision has no classification model {bare!r}")
        return ModelName("torchvision", bare)
    if name.startswith(TIMM_PREFIX):
        import timm

        bare = name[len(TIMM_PREFIX):]
        if not timm.is_model(bare):
            raise MdpError(f"--model {name}: timm has no model {bare!r}")
        return ModelName("timm", bare)
    if _is_factory_spec(name):
        return ModelName("factory", name)
    import timm

    in_tv, in_timm = name in _torchvision_names(), timm.is_model(name)
    if in_tv:
        note = (f"model {name!r}: both torchvision and timm have it; took torchvision's "
                f"(say timm:{name} for timm's, tv:{name} to silence this)") if in_timm else None
        return ModelName("torchvision", name, note)
    if in_timm:
        return ModelName("timm", name)
    raise MdpError(f"--model {name}: not a torchvision classification model nor a timm model; for your own "
                   "model give path/to/file.py:factory or package.module:factory")


def _load_factory(spec: str) -> Callable[..., Any]:
    source, _, attr = spec.rpartition(":")
    if not attr.isidentifier():
        raise MdpError(f"--model {spec}: {attr!r} is not a factory name (expected FILE.py:factory or module:factory)")
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source)
        if not path.is_file():
            raise MdpError(f"--model {spec}: file {path} not found")
        module_name = f"mdp_user_model_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise MdpError(f"--model {spec}: importing {path} failed: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise MdpError(f"--model {spec}: cannot import module {source!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise MdpError(f"--model {spec}: {source} has no callable {attr!r}")
    return factory


def build_from_factory(spec: str, **overrides: Any) -> nn.Module:
    factory = _load_factory(spec)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in overrides.items() if v is not None}
    refused = [k for k in given if not takes_any and k not in params]
    if refused:
        raise MdpError(f"--model {spec}: the factory takes no argument {refused[0]!r}; add it to the factory's "
                       "signature or leave the option out")
    model = factory(**given)
    if not isinstance(model, nn.Module):
        raise MdpError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_named_model(name: str, **overrides: Any) -> tuple[nn.Module, ModelName]:
    """Create the dense, randomly initialised model ``name`` means; returns it with the resolved name."""
    resolved = resolve_model_name(name)
    if resolved.library == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(resolved.name, weights=None, **overrides), resolved
    if resolved.library == "timm":
        import timm

        return timm.create_model(resolved.name, pretrained=False, **overrides), resolved
    return build_from_factory(resolved.name, **overrides), resolved


_NOTES_SAID: set[str] = set()


def say_note_once(resolved: ModelName) -> None:
    if resolved.note and resolved.note not in _NOTES_SAID:
        _NOTES_SAID.add(resolved.note)
        print(f"mdp: note: {resolved.note}", file=sys.stderr)
