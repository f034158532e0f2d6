"""Stages as library functions over one config, and ``mdp run``: the stages in order into a run directory.

Config (YAML, see configs/*.yaml; command-line flags override keys)::

    model: resnet18            # torchvision/timm name
    resolution: 64
    pretrained: null           # local weights file (safetensors or torch weights-only)
    space:   {step: null, max_options: 8, multiple: 1, prune_stem: false}
    profile: {device: cpu, dtype: float32, batch: 1, threads: 1, warmup: 10, repeats: 30, grid: 1,
              lut_dir: luts, stat: median}
    score:   {data: synthetic, batches: 4, batch_size: 16, seed: 0}
    solve:   {budget: 0.5, latency_model: multidim, time_limit: null}
    export:  {tolerance: 0.25, onnx: false, measure: true, repeats: 30}

That is the CNN config. For a ViT (``mdp_cli.families.family_of``: deit_*, vit_*, timm VisionTransformers)
the same sections hold, with ``num_classes``, ``space.steps`` and ``profile.grid`` as points per dim
instead of the CNN-only space keys (``mdp_cli.families.VIT_DEFAULTS``); ``load_config`` sets
``cfg["family"]`` and every ``stage_*`` below dispatches on it (``mdp_cli.vit_stages``).

Run directory: ``space.json``, ``importance.json``, ``problem.json``, ``solution.json``, ``exported/``
(arch.json, model.safetensors, report.json), ``state.json``. Every stage records the content hash of its
inputs (its config section, the hashes of the files it read); ``mdp run`` skips a stage whose recorded
hash equals the current one and whose outputs exist. The LUT lives in ``lut_dir`` (shared across runs and
models); profiling only measures rows it lacks.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

from mdp_cli.artifacts import canonical_hash, file_hash, provenance, read_json, write_json
from mdp_cli.errors import MdpError

DEFAULTS: dict[str, Any] = {
    "model": "resnet18",
    "resolution": 64,
    "pretrained": None,
    "space": {"step": None, "max_options": 8, "multiple": 1, "prune_stem": False},
    "profile": {"device": "cpu", "dtype": "float32", "batch": 1, "threads": 1, "warmup": 10, "repeats": 30,
                "grid": 1, "lut_dir": "luts", "stat": "median"},
    "score": {"data": "synthetic", "batches": 4, "batch_size": 16, "seed": 0},
    "solve": {"budget": 0.5, "latency_model": "multidim", "time_limit": None},
    "export": {"tolerance": 0.25, "onnx": False, "measure": True, "repeats": 30},
}
STAGES = ("profile", "score", "problem", "solve", "export")
STATE_SCHEMA = "mdp.run_state"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif value is not None or key not in out:
            out[key] = value
    return out


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of ``path`` (YAML) with ``overrides`` (command-line flags) on top, over the defaults of
    the model's family (``mdp_cli.families``); ``cfg["family"]`` says which stages run."""
    import yaml

    from mdp_cli.families import resolve_config

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MdpError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MdpError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise MdpError(f"{path}: a config must be a mapping of settings")
        for section in ("space", "profile", "score", "solve", "export"):
            if data.get(section) is not None and not isinstance(data[section], dict):
                raise MdpError(f"{path}: '{section}' must be a mapping of settings")
        base = Path(path).parent
        for key in ("pretrained",):
            if data.get(key) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
    given = merge(data, {k: v for k, v in (overrides or {}).items() if v not in (None, {})})
    return resolve_config(given, str(path) if path is not None else "command line")


# ---------------------------------------------------------------------------------------------------------
# Stages as functions
# ---------------------------------------------------------------------------------------------------------


def space_options(cfg: dict[str, Any]) -> dict[str, Any]:
    s = cfg["space"]
    return {"step": s["step"], "max_options": s["max_options"], "multiple": s["multiple"], "prune_stem": s["prune_stem"]}


def is_vit(cfg: dict[str, Any]) -> bool:
    """The family the stages dispatch on (set by ``load_config``; derived from the model for older configs)."""
    if "family" not in cfg:
        from mdp_cli.families import family_of

        cfg["family"] = family_of(cfg["model"])
    return cfg["family"] == "vit"


def discover(cfg: dict[str, Any]):
    """(dense model, analysis) for the config's model, resolution, weights and space options; for every
    family ``analysis.space`` is the pruning space."""
    if is_vit(cfg):
        from mdp_cli.vit_stages import cfg_discover

        return cfg_discover(cfg)
    from mdp_cli.space.cnn import discover_space

    return discover_space(cfg["model"], cfg["resolution"], pretrained=cfg.get("pretrained"), **space_options(cfg))


def lut_location(cfg: dict[str, Any]) -> Path:
    from mdp_cli.latency.lut import lut_filename
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name

    p = cfg["profile"]
    return Path(p["lut_dir"]) / lut_filename(device_name(check_device(p["device"])), canonical_dtype(p["dtype"]),
                                             p["batch"], p["threads"])


def open_lut(cfg: dict[str, Any], path: str | Path | None = None):
    from mdp_cli.latency.lut import Lut
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name

    p = cfg["profile"]
    return Lut.open(path or lut_location(cfg), device_name(check_device(p["device"])), canonical_dtype(p["dtype"]),
                    p["batch"], p["threads"], create=False, stat=p["stat"])


def stage_profile(cfg: dict[str, Any], analysis=None, progress: bool = True, lut_path: str | Path | None = None) -> dict[str, Any]:
    from mdp_cli.latency.profile import profile_space

    if analysis is None:
        _, analysis = discover(cfg)
    if is_vit(cfg):
        from mdp_cli.vit_stages import cfg_profile

        return cfg_profile(cfg, analysis.space, lut_path or lut_location(cfg), progress=progress)
    p = cfg["profile"]
    return profile_space(analysis.space, device=p["device"], dtype=p["dtype"], batch=p["batch"], lut_dir=p["lut_dir"],
                         lut_path=lut_path, warmup=p["warmup"], repeats=p["repeats"], grid=p["grid"],
                         num_threads=p["threads"], progress=progress)


def stage_score(cfg: dict[str, Any], out: str | Path, model=None, analysis=None) -> dict[str, Any]:
    from mdp_cli.importance.taylor import bn_taylor_scores, importance_record, scoring_batches, write_importance

    if analysis is None:
        model, analysis = discover(cfg)
    if is_vit(cfg):
        from mdp_cli.vit_stages import cfg_score

        return cfg_score(cfg, out, model, analysis.space)
    s = cfg["score"]
    num_classes = analysis.graph.nodes[-2].shape[-1] if len(analysis.graph.nodes) > 1 else 1000
    batches = scoring_batches(str(s["data"]), cfg["resolution"], s["batch_size"], s["batches"], s["seed"], num_classes)
    t0 = time.perf_counter()
    node_scores, count = bn_taylor_scores(model, analysis, batches, device=cfg["profile"]["device"])
    dims = importance_record(analysis, node_scores)
    write_importance(out, cfg["model"], dims, data=str(s["data"]), batches=count, batch_size=s["batch_size"],
                     resolution=cfg["resolution"], pretrained=cfg.get("pretrained"), space=space_options(cfg),
                     synthetic=str(s["data"]) == "synthetic")
    return {"importance": str(out), "batches": count, "seconds": time.perf_counter() - t0}


def stage_problem(cfg: dict[str, Any], importance_path: str | Path | None, out: str | Path, analysis=None,
                  lut_path: str | Path | None = None):
    from mdp_cli.importance.taylor import read_importance
    from mdp_cli.space.to_problem import build_problem

    if analysis is None:
        _, analysis = discover(cfg)
    if is_vit(cfg):
        from mdp_cli.vit_stages import cfg_problem

        return cfg_problem(cfg, analysis.space, open_lut(cfg, lut_path), importance_path, out)
    importance = read_importance(importance_path) if importance_path else None
    lut = open_lut(cfg, lut_path)
    problem = build_problem(analysis.space, lut, importance, interpolate=True, source=str(importance_path),
                            resolution=cfg["resolution"], space_options=space_options(cfg),
                            importance_file=str(importance_path) if importance_path else None)
    problem.save(out)
    return problem


def stage_solve(cfg: dict[str, Any], problem_path: str | Path, out: str | Path):
    try:
        from mdp_cli.solve import load_problem, solve_problem
    except ImportError:
        raise MdpError("the solver (mdp_cli.solve.solve_problem) is not available in this build") from None
    s = cfg["solve"]
    problem = load_problem(problem_path)
    solution = solve_problem(problem, budget=s["budget"], latency_model=s["latency_model"], time_limit=s["time_limit"])
    solution.save(out, problem=str(problem_path))
    return solution


def stage_export(cfg: dict[str, Any], solution: dict[str, Any] | str | Path | None, out_dir: str | Path,
                 importance_path: str | Path | None = None, model=None, analysis=None,
                 check_budget: bool = True) -> dict[str, Any]:
    """Export the pruned model for a solution (``None``: nothing pruned); measure and gate on the budget."""
    from mdp_cli.export.cnn_prune import model_stats, prune_cnn
    from mdp_cli.export.spec import save_exported
    from mdp_cli.importance.taylor import read_importance
    from mdp_cli.latency.timing import check_device, clock_for, device_name, threads, time_round_robin

    if analysis is None:
        model, analysis = discover(cfg)
    if isinstance(solution, (str, Path)):
        src = str(solution)
        solution = read_json(solution, "mdp.solution", 1)
    else:
        src = "<solution>"
    solution = solution or {}
    if is_vit(cfg):
        from mdp_cli.vit_stages import cfg_export

        return cfg_export(cfg, solution, src, out_dir, importance_path, model, analysis.space, check_budget)
    choice = solution.get("choice", {})
    kept = solution.get("blocks", solution.get("kept", {}))
    order = None
    if importance_path:
        order = {k: v["order"] for k, v in read_importance(importance_path)["dims"].items()}
    elif choice:
        raise MdpError("export needs --importance (which channels to keep); without it nothing can be chosen")
    net, arch = prune_cnn(model, analysis, choice, kept, order)
    out_dir = Path(out_dir)
    save_exported(out_dir, net, arch, source_model=cfg["model"], solution=src, resolution=cfg["resolution"],
                  importance=str(importance_path) if importance_path else None)
    shape = (3, cfg["resolution"], cfg["resolution"])
    dense_stats, stats = model_stats(model, shape), model_stats(net, shape)
    report: dict[str, Any] = {
        "model": cfg["model"], "exported": str(out_dir), "params": stats["params"], "flops": stats["flops"],
        "dense_params": dense_stats["params"], "dense_flops": dense_stats["flops"],
        "predicted_ms": solution.get("predicted_latency"), "dense_predicted_ms": solution.get("dense_latency"),
        "budget_ms": solution.get("budget"), "tolerance": cfg["export"]["tolerance"],
        "blocks_removed": sorted(b for b, k in kept.items() if not k),
        "widths": arch["widths"],
    }
    p = cfg["profile"]
    if cfg["export"]["measure"]:
        import torch

        device = check_device(p["device"])
        x = torch.randn(p["batch"], *shape)
        with threads(p["threads"] if device == "cpu" else None):
            (med, spread, p10), = time_round_robin([(net, x)], device, p["dtype"], p["warmup"], cfg["export"]["repeats"])
            (dmed, dspread, dp10), = time_round_robin([(model, x)], device, p["dtype"], p["warmup"], cfg["export"]["repeats"])
        stat = p["stat"]
        report.update(device=device_name(device), clock=clock_for(device, p["threads"]), measured_ms=med if stat == "median" else p10, spread_ms=spread,
                      measured_dense_ms=dmed if stat == "median" else dp10, stat=stat)
        measured = report["measured_ms"]
        if report["predicted_ms"]:
            report["prediction_error"] = (report["predicted_ms"] - measured) / measured
        budget = report["budget_ms"]
        report["within_tolerance"] = None if budget is None else measured <= budget * (1 + cfg["export"]["tolerance"])
    if cfg["export"]["onnx"]:
        report["onnx"] = export_onnx(net, shape, out_dir / "model.onnx")
    write_json(out_dir / "report.json", {"schema": "mdp.export_report", "version": 1,
                                         "provenance": provenance(model=cfg["model"]), **report})
    if check_budget and report.get("within_tolerance") is False:
        raise MdpError(
            f"measured latency {report['measured_ms']:.3f} ms misses the budget {report['budget_ms']:.3f} ms by more "
            f"than the tolerance {cfg['export']['tolerance']:.0%} (predicted {report['predicted_ms']:.3f} ms); "
            f"model written to {out_dir}")
    return report


def export_onnx(net, shape, path: Path) -> dict[str, Any]:
    """Write ONNX (single file) and check its output against PyTorch with onnx's reference runtime."""
    import numpy as np
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    from mdp_cli.artifacts import atomic_path

    x = torch.randn(1, *shape)
    with atomic_path(path) as tmp:
        torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (got,) = ReferenceEvaluator(model).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = net(x).numpy()
    err = float(np.abs(got - want).max())
    if err > 1e-3:
        raise MdpError(f"{path}: ONNX output differs from PyTorch by {err:.2e}")
    return {"path": str(path), "max_abs_diff": err}


# ---------------------------------------------------------------------------------------------------------
# mdp run
# ---------------------------------------------------------------------------------------------------------


def _hash_inputs(section: Any, files: list[Path]) -> str:
    return canonical_hash({"config": section, "files": [file_hash(f) if f.is_file() else None for f in files]})


def run_pipeline(cfg: dict[str, Any], run_dir: str | Path, echo: Callable[[str], None] = print,
                 force: bool = False, progress: bool = True, check_budget: bool = True,
                 until: str = "export") -> dict[str, Any]:
    """Run profile -> score -> problem -> solve -> export into ``run_dir``, skipping unchanged stages
    (stopping after ``until``)."""
    if until not in STAGES:
        raise MdpError(f"unknown stage {until!r} (stages: {', '.join(STAGES)})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state = read_json(state_path, STATE_SCHEMA, 1)["stages"] if state_path.is_file() else {}
    lut = lut_location(cfg)
    paths = {"importance": run_dir / "importance.json", "problem": run_dir / "problem.json",
             "solution": run_dir / "solution.json", "export": run_dir / "exported" / "arch.json"}
    model_key = {k: cfg[k] for k in ("model", "resolution", "pretrained", "space")}
    if is_vit(cfg):
        model_key["num_classes"] = cfg.get("num_classes")
    if cfg.get("pretrained"):
        model_key["weights"] = file_hash(cfg["pretrained"])
    cache: dict[str, Any] = {}

    def analysis():
        if "analysis" not in cache:
            cache["model"], cache["analysis"] = discover(cfg)
            write_json(run_dir / "space.json", {"schema": "mdp.space", "version": 1,
                                                "provenance": provenance(model=cfg["model"]),
                                                **cache["analysis"].space.to_dict()})
        return cache["analysis"]

    def step(name: str, inputs_hash: Callable[[], str], outputs: list[Path], fn: Callable[[], Any]) -> None:
        if not force and state.get(name) == inputs_hash() and all(p.exists() for p in outputs):
            echo(f"[{name}] unchanged inputs, skipped")
            return
        t0 = time.perf_counter()
        result = fn()
        state[name] = inputs_hash()  # after the stage: profiling itself changes the LUT it is keyed on
        write_json(state_path, {"schema": STATE_SCHEMA, "version": 1, "provenance": provenance(), "stages": state})
        echo(f"[{name}] done in {time.perf_counter() - t0:.1f} s" + (f": {result}" if isinstance(result, str) else ""))

    def do_profile():
        s = stage_profile(cfg, analysis(), progress=progress)
        return f"{s['measured']} configurations measured, {s['reused']} reused from {s['lut']}"

    # The LUT is content-addressed by its rows: profiling re-runs (cheaply) when the LUT file changed.
    def do_score():
        analysis()
        stage_score(cfg, paths["importance"], cache["model"], cache["analysis"])
        return str(paths["importance"])

    def do_problem():
        stage_problem(cfg, paths["importance"], paths["problem"], analysis())
        return str(paths["problem"])

    step("profile", lambda: _hash_inputs([model_key, cfg["profile"]], [lut]), [lut], do_profile)
    step("score", lambda: _hash_inputs([model_key, cfg["score"]], []), [paths["importance"]], do_score)
    step("problem", lambda: _hash_inputs([model_key, cfg["profile"]["stat"]], [lut, paths["importance"]]),
         [paths["problem"]], do_problem)
    if until == "problem":
        return {"problem": str(paths["problem"])}
    result: dict[str, Any] = {}

    def do_solve():
        sol = stage_solve(cfg, paths["problem"], paths["solution"])
        return f"predicted {sol.predicted_latency:.3f} ms of dense {sol.dense_latency:.3f} ms (budget {sol.budget:.3f} ms)"

    step("solve", lambda: _hash_inputs(cfg["solve"], [paths["problem"]]), [paths["solution"]], do_solve)

    def do_export():
        analysis()
        report = stage_export(cfg, paths["solution"], run_dir / "exported", paths["importance"], cache["model"],
                              cache["analysis"], check_budget=False)
        result.update(report)
        return str(run_dir / "exported")

    step("export", lambda: _hash_inputs([model_key, cfg["export"], cfg["profile"]], [paths["solution"], paths["importance"]]),
         [paths["export"]], do_export)
    report_path = run_dir / "exported" / "report.json"
    report = read_json(report_path, "mdp.export_report", 1) if report_path.is_file() else result
    if report.get("measured_ms") is not None:
        echo(format_report(report))
    if check_budget and report.get("within_tolerance") is False:
        raise MdpError(f"measured latency {report['measured_ms']:.3f} ms misses the budget {report['budget_ms']:.3f} ms "
                       f"by more than {report['tolerance']:.0%}")
    return report


def format_report(r: dict[str, Any]) -> str:
    line = f"model      {r.get('model')}: params {r['params'] / 1e6:.3f} M (dense {r['dense_params'] / 1e6:.3f} M)"
    if r.get("flops") is not None:
        line += f", FLOPs {r['flops'] / 1e9:.3f} G (dense {r['dense_flops'] / 1e9:.3f} G)"
    lines = [line]
    if r.get("blocks_removed"):
        lines.append(f"removed    {len(r['blocks_removed'])} blocks: {', '.join(r['blocks_removed'])}")
    if r.get("measured_ms") is not None:
        pred = r.get("predicted_ms")
        lines.append(
            f"latency    measured {r['measured_ms']:.3f} ms ({r.get('stat', 'median')}, {r.get('clock', '')} clock, "
            f"{r.get('device', '')}), "
            + (f"predicted {pred:.3f} ms ({r['prediction_error']:+.1%}), " if pred else "")
            + f"dense measured {r['measured_dense_ms']:.3f} ms"
            + (f" -> speed-up {r['measured_dense_ms'] / r['measured_ms']:.2f}x" if r['measured_ms'] else ""))
    if r.get("budget_ms") is not None and r.get("within_tolerance") is not None:
        lines.append(f"budget     {r['budget_ms']:.3f} ms, tolerance {r['tolerance']:.0%}: "
                     + ("met" if r["within_tolerance"] else "MISSED"))
    if r.get("onnx"):
        lines.append(f"onnx       {r['onnx']['path']} (max |onnx - torch| = {r['onnx']['max_abs_diff']:.1e})")
    return "\n".join(lines)


def ensure_problem(path: str | Path, echo: Callable[[str], None] = print, progress: bool = True) -> Path:
    """What `mdp solve` reads when pointed at a run directory or a config instead of a problem file.

    - a problem JSON: itself;
    - a run directory: its problem.json, (re)built from its config.json when missing or out of date;
    - a YAML config: the stages up to the problem (profile, score, problem) run into runs/<config name>/,
      skipping unchanged ones, and that problem.json is returned.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        saved = path / "config.json"
        if not saved.is_file():
            if (path / "problem.json").is_file():
                return path / "problem.json"
            raise MdpError(f"{path}: not a run directory (no config.json or problem.json); run 'mdp run CONFIG' first")
        cfg = read_json(saved, "mdp.config", 1)["config"]
        run_dir = path
    elif path.suffix in (".yaml", ".yml"):
        cfg = load_config(path)
        run_dir = Path(cfg.get("run_dir") or Path("runs") / path.stem)
        write_json(run_dir / "config.json", {"schema": "mdp.config", "version": 1, "provenance": provenance(),
                                             "config": cfg})
    else:
        raise MdpError(f"{path}: expected a problem JSON, a run directory or a YAML config")
    run_pipeline(cfg, run_dir, echo=echo, progress=progress, check_budget=False, until="problem")
    return run_dir / "problem.json"
