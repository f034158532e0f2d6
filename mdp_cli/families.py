"""Model families: which pipeline a model goes through, and each family's config keys and defaults.

The ``mdp`` stage commands and ``mdp run`` are the same for every model; ``family_of`` decides from the
model name whether the CNN machinery (``mdp_cli.space.cnn``, ``latency/profile.py``,
``importance/taylor.py``, ``export/cnn_prune.py``) or the ViT one (``mdp_cli.vit_stages``) does the work.
``resolve_config`` checks a config (file keys and command-line flags together) against the keys that
family understands: a key of the other family is a one-line error naming it, never silently ignored.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from mdp_cli.errors import MdpError

FAMILIES = ("cnn", "vit")

# timm modules whose models are (subclasses of) timm's VisionTransformer; mdp_cli.space.vit refuses, in one
# line, the variants it does not support (register tokens, layer scale, ...).
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")

VIT_DEFAULTS: dict[str, Any] = {
    "model": "deit_tiny",
    "resolution": None,      # None: the model's own img_size
    "num_classes": None,     # None: the model's own (1000)
    "pretrained": None,
    "space": {"steps": None},  # {embed, heads, qk, v, mlp}: units per option step
    "profile": {"device": "cpu", "dtype": "float32", "batch": 1, "threads": 1, "warmup": 10, "repeats": 30,
                "grid": None, "lut_dir": "luts", "stat": "median"},  # grid: measured points per dim
    "score": {"data": "synthetic", "batches": 4, "batch_size": 16, "seed": 0},
    "solve": {"budget": 0.5, "latency_model": "multidim", "time_limit": None},
    "export": {"tolerance": 0.25, "onnx": False, "measure": True, "repeats": 30},
}

# command-line spelling of config keys, for error messages
FLAGS = {"space.step": "--step", "space.max_options": "--max-options", "space.multiple": "--multiple",
         "space.prune_stem": "--prune-stem", "space.steps": "--steps", "num_classes": "--num-classes",
         "profile.grid": "--grid"}
NAMES = {"cnn": "CNN", "vit": "ViT"}
HINTS = {"cnn": "use --step/--max-options/--multiple", "vit": "use --steps embed=16,heads=1,qk=8,v=8,mlp=64"}


def family_of(model: str) -> str:
    """``"vit"`` for a timm VisionTransformer name or alias (deit_*, vit_*), else ``"cnn"``."""
    from mdp_cli.models import canonical_name

    name = canonical_name(str(model))
    if name.startswith(("deit_", "vit_")):
        return "vit"
    try:
        import timm

        if timm.is_model(name) and timm.models.model_entrypoint(name).__module__ in VIT_MODULES:
            return "vit"
    except Exception:  # an unknown name: the CNN path reports it when it creates the model
        pass
    return "cnn"


def defaults(family: str) -> dict[str, Any]:
    from mdp_cli.pipeline import DEFAULTS

    return copy.deepcopy(VIT_DEFAULTS if family == "vit" else DEFAULTS)


def parse_mapping(text: Any, what: str) -> dict[str, int]:
    """``embed=16,heads=1`` (or a mapping from YAML) -> {"embed": 16, "heads": 1}."""
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        try:
            items = [kv.split("=", 1) for kv in str(text).split(",") if kv.strip()]
        except ValueError:
            items = []
    try:
        out = {str(k).strip(): int(v) for k, v in items}
    except (TypeError, ValueError):
        out = {}
    if not out:
        raise MdpError(f"{what} {text!r}: expected KEY=N pairs, e.g. embed=16,heads=1,qk=8,v=8,mlp=64")
    return out


def resolve_config(given: dict[str, Any], where: str) -> dict[str, Any]:
    """Family-checked config: ``given`` (file keys merged with flags, no defaults) over the family's
    defaults, with ``family`` set. ``where`` names the source in error messages (a file or 'flags')."""
    from mdp_cli.pipeline import DEFAULTS, merge

    model = given.get("model") or DEFAULTS["model"]
    family = family_of(model)
    declared = given.get("family")
    if declared is not None and declared != family:
        raise MdpError(f"{where}: family {declared!r} does not match model {model!r}, which is a {family} "
                       f"(remove 'family' or fix 'model')")
    other_family = "vit" if family == "cnn" else "cnn"
    own, other = defaults(family), defaults(other_family)
    for key, value in given.items():
        if key == "family":
            continue
        if key in ("run_dir", "name"):
            continue
        sections = [(f"{key}.{k}", key, k) for k in (value or {})] if isinstance(own.get(key), dict) else [(key, None, key)]
        for dotted, section, sub in sections:
            known = own.get(section, {}) if section else own
            if sub in known:
                continue
            other_known = other.get(section, {}) if section else other
            if isinstance(other_known, dict) and sub in other_known:
                flag = FLAGS.get(dotted)
                raise MdpError(f"{where}: {dotted}{f' ({flag})' if flag else ''} applies to {NAMES[other_family]} "
                               f"models only and {model} is a {NAMES[family]} "
                               f"({HINTS[family] if section == 'space' else 'remove it'})")
            if section:
                raise MdpError(f"{where}: unknown keys {[sub]} in '{section}' (known: {sorted(known)})")
            raise MdpError(f"{where}: unknown config keys {[key]} (known: {sorted(set(own) | {'family'})})")
    cfg = merge(own, given)
    cfg["family"] = family
    p = cfg["profile"]
    if family == "vit":
        if cfg["space"]["steps"] is not None:
            cfg["space"]["steps"] = parse_mapping(cfg["space"]["steps"], f"{where}: space.steps")
        if p["grid"] is not None:
            p["grid"] = parse_mapping(p["grid"], f"{where}: profile.grid")
    else:
        try:
            p["grid"] = int(p["grid"])
        except (TypeError, ValueError):
            raise MdpError(f"{where}: profile.grid {p['grid']!r}: for a CNN an integer (measure every N-th option); "
                           f"per-dim points (embed=5,...) are for ViTs") from None
    return cfg
