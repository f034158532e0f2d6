"""Typed configuration: one dataclass per section, validated when a config is loaded.

A config (YAML file keys merged with command-line flags) is checked before any stage runs: unknown keys,
wrong types and out-of-range values are one-line errors naming the key, the value and what is allowed.
The model's family (``mdp_cli.families``) declares its own ``space`` section and how it reads
``profile.grid``; a key that only another family understands is an error naming that family.

The resolved config is a plain dict (what ``config.json`` of a run directory holds and what stages read)::

    model, family, resolution, pretrained, random_init, num_classes,
    space:   the family's section (CNN: step, max_options, multiple, prune_stem; ViT: steps)
    profile: {device, dtype, batch, threads, warmup, repeats, grid, lut_dir, stat, runtime}
    score:   {data, batches, batch_size, seed, objective, criterion, coupled, normalize}
    solve:   {budget, latency_model, time_limit, formulation, knapsack, max_params, max_flops, min_keep, multiple,
              sweep}
    export:  {tolerance, onnx, measure, repeats}
    refine:  {enabled, rounds, tolerance, two_sided, repeats}
    calibrate: {configs, seed, repeats, file}
"""

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from mdp_cli.errors import MdpError
from mdp_cli.importance.normalize import DEFAULT_NORMALIZE, NORMALIZE_MODES
from mdp_cli.settings import check_value, section_from, setting


@dataclasses.dataclass
class ProfileSection:
    device: str = setting("cpu", doc="cpu or cuda[:N]")
    dtype: str = setting("float32", choices=("float32", "fp32", "float16", "fp16", "bfloat16", "bf16"))
    batch: int = setting(1, min=1)
    threads: int = setting(1, min=1)
    warmup: int = setting(10, min=0)
    repeats: int = setting(30, min=1)
    rounds: Optional[int] = setting(None, min=1,
                                    doc="passes over all rows, the repeats split among them; unset: the family's "
                                        "plan (CNN 2, ViT/Swin 3). On a shared machine, more passes with more "
                                        "repeats (8 and 120) spread every row over a longer span of its states "
                                        "(docs/latency.md §1 item 7)")
    grid: Any = setting(None, doc="measured points per dim; read by the family (Family.parse_grid)")
    lut_dir: str = setting("luts")
    stat: str = setting("median", choices=("median", "p10", "ref"))
    runtime: str = setting("eager", choices=("eager", "onnxruntime", "tensorrt"),
                           doc="what latency terms and the export are timed in (latency/runtimes.py)")


@dataclasses.dataclass
class ScoreSection:
    data: str = setting("synthetic", doc="builtin:NAME, a train/val directory, an ImageFolder, or synthetic")
    batches: int = setting(4, min=1)
    batch_size: int = setting(16, min=1)
    seed: int = setting(0, min=0)
    objective: Optional[str] = setting(None, choices=("labels", "pseudo_labels", "distill", "features"),
                                       doc="loss the scores are the Taylor terms of: cross-entropy to the data's "
                                           "labels, to the dense model's own predictions (no labels needed), to "
                                           "labels sampled from its output distribution (distill: the KL to it, "
                                           "no labels needed), or to its features (headless backbones); unset: "
                                           "the model family's default")
    criterion: Optional[str] = setting(None, choices=("taylor", "fisher"),
                                       doc="first-order Taylor |g*w|, or the squared group term (Fisher: the "
                                           "second-order loss change, NViT's criterion); unset: the model "
                                           "family's default")
    coupled: Optional[str] = setting(None, choices=("sum", "mean", "sqrt"),
                                     doc="how a dim shared by several layers (a residual width, a ViT embedding) "
                                         "combines their scores: sum, mean, or sum / sqrt(count); unset: the "
                                         "model family's default (importance/coupled.py)")
    normalize: str = setting(DEFAULT_NORMALIZE, choices=NORMALIZE_MODES,
                             doc="scale every dim before the solver weighs dims against each other: none, each "
                                 "dim's total to 1 (sum), or its mean per unit to 1 (mean) "
                                 "(importance/normalize.py)")


@dataclasses.dataclass
class SolveSection:
    budget: Union[float, str] = setting(0.5, doc="fraction of dense (0.5), percentage (50%) or latency (12ms)")
    latency_model: str = setting("multidim", choices=("multidim", "linear"))
    time_limit: Optional[float] = setting(None, min=0)
    formulation: str = setting("auto", choices=("auto", "hub", "monolithic", "blocks"))
    knapsack: str = setting("dp", choices=("dp", "highs"))
    # constraints beside the budget (solved exactly in the Pyomo model with HiGHS; docs/solver.md)
    max_params: Union[float, str, None] = setting(None, doc="parameter cap: 10M, 2.5G, 800k or a number")
    max_flops: Union[float, str, None] = setting(None, doc="FLOP cap, same forms")
    min_keep: Optional[float] = setting(None, min=0, doc="no dim below this fraction of its size (0.25)")
    multiple: Optional[int] = setting(None, min=1, doc="every kept width a multiple of this")
    # `mdp run` also solves every budget of this range into sweep.json (the Pareto front of `mdp report`)
    sweep: Union[str, float, None] = setting(None, doc="budgets start:stop:step (0.3:0.9:0.1) or a comma list (0.3,0.5)")


@dataclasses.dataclass
class ExportSection:
    tolerance: float = setting(0.25, min=-0.99, doc="allowed overshoot of the budget (0.2 = 20 %; negative: a margin below it)")
    onnx: bool = setting(False)
    measure: bool = setting(True)
    repeats: int = setting(30, min=1)


@dataclasses.dataclass
class CalibrateSection:
    """In-network calibration of the latency table (docs/latency.md, ``latency/calibration.py``): pruned
    configurations of the model exported and timed in turns with the dense one, a scale per op class and a
    per-term overhead fitted to them, used where they predict unseen configurations clearly better."""

    configs: int = setting(16, min=0, doc="pruned configurations timed (0: off; else at least 4) (--calibrate-configs)")
    seed: int = setting(0, min=0, doc="which configurations")
    repeats: Optional[int] = setting(None, min=2, doc="timed calls per configuration, in turns, split between two passes "
                                                       "(default profile.repeats; at least 2)")
    file: str = setting("", doc="a calibration JSON to apply to the problem ('mdp problem --calibration')")


@dataclasses.dataclass
class RefineSection:
    """``mdp run --refine``: the closed loop of docs/refine.md (measure the export, re-measure the rows it
    reads, re-solve with a corrected budget, re-export)."""

    enabled: bool = setting(False, doc="run the loop after the export (--refine)")
    rounds: int = setting(3, min=1, doc="most rounds, the first export included (--refine-rounds)")
    tolerance: float = setting(0.1, min=0, doc="the loop ends when the measured fraction of dense is within this "
                                               "relative distance of the budget (--refine-tolerance)")
    two_sided: bool = setting(True, doc="also refine an export measured below budget*(1-tolerance): accuracy "
                                        "left on the table (false: only a too slow one)")
    repeats: Optional[int] = setting(None, min=1, doc="samples per re-measured row (default 3 x profile.repeats)")


SECTIONS: dict[str, type] = {"profile": ProfileSection, "score": ScoreSection, "solve": SolveSection,
                             "export": ExportSection, "refine": RefineSection, "calibrate": CalibrateSection}
# Top-level keys every family understands (besides the sections); ``None`` resolution: the family's default.
TOP_LEVEL = ("model", "family", "resolution", "pretrained", "random_init", "num_classes", "run_dir", "name")


# Tensor cores run float16/bfloat16 matrix products in tiles of 8 channels: other widths waste the tile.
GPU_MULTIPLE = 8


def gpu_width_default(cfg: dict[str, Any], given: Mapping[str, Any]) -> None:
    """On CUDA in float16/bfloat16, widths default to multiples of ``GPU_MULTIPLE`` (a family whose space
    section has ``multiple``, e.g. the CNN's); an explicit ``space.multiple`` (--multiple) is left alone."""
    p = cfg["profile"]
    if "multiple" not in cfg["space"] or (given.get("space") or {}).get("multiple") is not None:
        return
    if str(p["device"]).startswith("cuda") and p["dtype"] in ("float16", "fp16", "bfloat16", "bf16"):
        cfg["space"]["multiple"] = GPU_MULTIPLE


def merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``override`` over ``base``, section by section; a ``None`` in ``override`` keeps ``base``'s value."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        elif value is not None or key not in out:
            out[key] = value
    return out


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config of ``path`` (YAML) with ``overrides`` (command-line flags) on top, validated against the
    model family's sections (``mdp_cli.families``); returns the resolved dict with ``family`` set."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MdpError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MdpError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise MdpError(f"{path}: cannot read the config ({exc})") from None
        if not isinstance(data, dict):
            raise MdpError(f"{path}: a config must be a mapping of settings")
        if isinstance(data.get("pretrained"), str) and data["pretrained"] and ":" not in data["pretrained"] \
                and not Path(data["pretrained"]).is_absolute():
            data["pretrained"] = str(path.parent / data["pretrained"])  # relative to the config file
    given = merge(data, {k: v for k, v in (overrides or {}).items() if v not in (None, {})})
    return resolve_config(given, str(path) if path is not None else "command line")


def resolve_config(given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validated config dict: ``given`` (file keys merged with flags, no defaults) over the defaults of the
    model's family. ``where`` names the source in error messages (a file or 'command line')."""
    from mdp_cli.families import all_families, family_for_model, get_family

    for key in ("space", *SECTIONS):
        if given.get(key) is not None and not isinstance(given[key], Mapping):
            raise MdpError(f"{where}: '{key}' must be a mapping of settings, not {given[key]!r}")
    unknown = [k for k in given if k not in TOP_LEVEL and k != "space" and k not in SECTIONS]
    if unknown:
        raise MdpError(f"{where}: unknown config keys {unknown} (known: {', '.join(sorted((*TOP_LEVEL, 'space', *SECTIONS)))})")
    model = given.get("model")
    if model is not None and not isinstance(model, str):
        raise MdpError(f"{where}: model = {model!r} is not allowed; expected a model name")
    declared = given.get("family")
    if model is None:
        family = get_family(declared) if declared else all_families()[0]
        model = family.default_model
    else:
        family = family_for_model(model)
        if declared is not None and declared != family.name:
            raise MdpError(f"{where}: family {declared!r} does not match model {model!r}, which is a {family.name} "
                           f"(remove 'family' or fix 'model')")
    top = {}
    # num_classes 0: a headless backbone (features out), where the family supports it
    for key, annotation, meta in (("resolution", Optional[int], {"min": 1}), ("num_classes", Optional[int], {"min": 0}),
                                  ("pretrained", Optional[str], {}), ("random_init", Optional[bool], {}),
                                  ("run_dir", Optional[str], {}),
                                  ("name", Optional[str], {})):
        top[key] = check_value(given.get(key), annotation, meta, key, where)
    owners: dict[str, list[str]] = {}
    for other in all_families():
        if other.name != family.name:
            for fld in dataclasses.fields(other.space_section):
                owners.setdefault(fld.name, []).append(other.title)
    foreign = {key: "/".join(titles) for key, titles in owners.items()}
    space = section_from(family.space_section, given.get("space"), "space", where, foreign, family.title)
    sections = {name: section_from(cls, given.get(name), name, where) for name, cls in SECTIONS.items()}
    cfg: dict[str, Any] = {
        "model": model, "family": family.name,
        "resolution": top["resolution"] if top["resolution"] is not None else family.default_resolution,
        "pretrained": top["pretrained"] or None, "random_init": bool(top["random_init"]), "num_classes": top["num_classes"],
        "space": family.check_space(dataclasses.asdict(space), where),
        **{name: dataclasses.asdict(section) for name, section in sections.items()},
    }
    cfg["profile"]["grid"] = family.parse_grid(cfg["profile"]["grid"], where)
    for key in ("objective", "criterion", "coupled"):  # unset: the family's measured default
        if cfg["score"][key] is None:
            cfg["score"][key] = getattr(family, f"default_{key}")
    if cfg["solve"]["sweep"] is not None:
        from mdp_cli.solve.sweep import parse_sweep

        parse_sweep(cfg["solve"]["sweep"], f"{where}: solve.sweep (--sweep)")  # a bad range fails before any stage
    if 0 < cfg["calibrate"]["configs"] < 4:
        raise MdpError(f"{where}: calibrate.configs (--calibrate-configs) = {cfg['calibrate']['configs']} is not allowed; "
                       f"expected 0 (off) or at least 4 (the fit is judged on configurations it has not seen)")
    gpu_width_default(cfg, given)
    for key in ("run_dir", "name"):
        if top[key] is not None:
            cfg[key] = top[key]
    return cfg
