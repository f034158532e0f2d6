"""Validated settings: dataclass fields that carry their allowed range or values, and the checks.

The low layer of the typed configuration (``mdp_cli.config``): families declare their own config sections
with ``setting`` fields, and ``section_from`` builds and validates a section from user input with one-line
errors that name the key (and its flag), the value and what is allowed.
"""

import dataclasses
import typing
from typing import Any, Mapping, Union

from mdp_cli.errors import MdpError

# Flag spelling of config keys, for error messages.
FLAGS = {"space.step": "--step", "space.max_options": "--max-options", "space.multiple": "--multiple",
         "space.prune_stem": "--prune-stem", "space.steps": "--steps", "num_classes": "--num-classes",
         "profile.grid": "--grid", "random_init": "--random-init", "pretrained": "--pretrained", "profile.batch": "--batch", "profile.threads": "--threads",
         "profile.dtype": "--dtype", "profile.device": "--device", "profile.stat": "--stat", "profile.runtime": "--runtime",
         "profile.repeats": "--repeats", "profile.rounds": "--rounds", "profile.warmup": "--warmup", "score.batches": "--batches",
         "score.batch_size": "--batch-size", "score.seed": "--seed", "score.data": "--data", "score.coupled": "--coupled", "score.normalize": "--normalize",
         "solve.budget": "--budget", "solve.sweep": "--sweep", "export.tolerance": "--tolerance", "refine.enabled": "--refine",
         "refine.rounds": "--refine-rounds", "calibrate.configs": "--calibrate-configs",
         "calibrate.file": "--calibration", "refine.tolerance": "--refine-tolerance", "resolution": "--resolution"}


def setting(default: Any, *, min: float | None = None, choices: tuple | None = None, doc: str = "") -> Any:
    """A dataclass field with its allowed range (``min``) or values (``choices``) for validation."""
    return dataclasses.field(default=default, metadata={"min": min, "choices": choices, "doc": doc})


def check_value(value: Any, annotation: Any, meta: Mapping[str, Any], key: str, where: str) -> Any:
    """``value`` if it fits ``annotation`` and ``meta`` (range, choices); else a one-line MdpError."""
    flag = FLAGS.get(key)
    name = f"{key}{f' ({flag})' if flag else ''}"
    allowed = _allowed(annotation, meta)
    if not _fits(value, annotation):
        raise MdpError(f"{where}: {name} = {value!r} is not allowed; expected {allowed}")
    if value is not None and meta.get("choices") and value not in meta["choices"]:
        raise MdpError(f"{where}: {name} = {value!r} is not allowed; expected {allowed}")
    if meta.get("min") is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value < meta["min"]:
        raise MdpError(f"{where}: {name} = {value!r} is out of range; expected {allowed}")
    if isinstance(value, int) and not isinstance(value, bool) and _base(annotation) is float:
        return float(value)
    return value


def _base(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is Union and len(args) == 1 else annotation


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if typing.get_origin(annotation) is Union:
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if typing.get_origin(annotation) in (dict, Mapping) or annotation in (dict, Mapping):
        return isinstance(value, (Mapping, str))
    return isinstance(value, annotation)


def _allowed(annotation: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    parts = [names.get(a, getattr(a, "__name__", str(a))) for a in
             (typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,))]
    text = " or ".join(parts)
    if meta.get("min") is not None:
        text += f" >= {meta['min']:g}"
    return text


def section_from(cls: type, given: Mapping[str, Any] | None, section: str, where: str,
                 foreign: Mapping[str, str] | None = None, family_title: str = "") -> Any:
    """Build and validate one section dataclass from ``given``; unknown keys are one-line errors (a key of
    another family's section: ``foreign`` maps it to that family's title)."""
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in given.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            if foreign and key in foreign:
                flag = FLAGS.get(dotted)
                raise MdpError(f"{where}: {dotted}{f' ({flag})' if flag else ''} applies to {foreign[key]} models "
                               f"only, not to this {family_title} model (remove it)")
            raise MdpError(f"{where}: unknown key {key!r} in '{section}' (known: {', '.join(sorted(fields))})")
        if value is None:
            continue
        values[key] = check_value(value, hints[key], fields[key].metadata, dotted, where)
    return cls(**values)
