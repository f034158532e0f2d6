"""Stages as library functions over one config, and ``mdp run``: the stages in order into a run directory.

Every stage is the same for every model: it asks the model's family (``mdp_cli.families``, chosen when the
config is loaded by ``mdp_cli.config.load_config``) for the family-specific part and does the rest itself::

    model --discover--> space --profile--> LUT --score--> importance --problem--> problem
          --solve--> solution --export--> pruned model (+ report, measured in turns with the dense model)

Config: see ``mdp_cli/config.py`` (YAML, configs/*.yaml; command-line flags override keys).

Run directory: ``space.json``, ``importance.json``, ``problem.json``, ``solution.json``, ``sweep.json`` (when
``solve.sweep`` is set), ``exported/`` (arch.json, model.safetensors, report.json), ``state.json``; with
``refine.enabled`` (``--refine``) the export stage is the closed loop of ``mdp_cli/refine.py``
(``refine/roundK/``, ``refine.json``; docs/refine.md). Every stage records the content hash of its
inputs (its config section, the hashes of the files it read); ``mdp run`` skips a stage whose recorded
hash equals the current one and whose outputs exist. The LUT lives in ``lut_dir`` (shared across runs and
models); profiling only measures rows it lacks.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from mdp_cli.artifacts import canonical_hash, file_hash, provenance, read_json, write_json
from mdp_cli.config import load_config, merge  # noqa: F401  (re-exported: the library's config entry points)
from mdp_cli.errors import MdpError
from mdp_cli.families import Discovered, Family, family_for_model, get_family

STAGES = ("profile", "score", "problem", "solve", "export")
STATE_SCHEMA = "mdp.run_state"
# v2: per stage {"inputs": hash, "outputs": {file: hash}}; v1 held the inputs hash alone (read: outputs unknown,
# so the stage re-runs once).
STATE_VERSION = 2


def family_of_config(cfg: Mapping[str, Any]) -> Family:
    """The family a resolved config belongs to (``cfg["family"]``; from the model for older configs)."""
    return get_family(cfg["family"]) if cfg.get("family") else family_for_model(cfg["model"])


# Random initialisation is seeded so that every stage of every run sees the same random model.
RANDOM_INIT_SEED = 0


def check_weights(cfg: Mapping[str, Any]) -> None:
    """Refuse a config that would prune a randomly initialised model without saying so."""
    if cfg.get("pretrained") and cfg.get("random_init"):
        raise MdpError("--pretrained and --random-init (pretrained / random_init) both given; keep one")
    if not cfg.get("pretrained") and not cfg.get("random_init"):
        raise MdpError(f"{cfg['model']}: no weights given; pass --pretrained FILE (safetensors, a weights-only torch "
                       "checkpoint or builtin:NAME), or --random-init to prune a randomly initialised model "
                       "(its importance and accuracy mean nothing: for smoke tests and latency work)")


def weights_note(cfg: Mapping[str, Any]) -> str:
    """Where the dense model's weights come from, in one line (every stage prints it)."""
    from mdp_cli.weights import describe_weights

    pretrained = cfg.get("pretrained")
    if not pretrained:
        return (f"weights: {describe_weights(None, seed=RANDOM_INIT_SEED)}, --random-init: importance and accuracy "
                "mean nothing")
    return f"weights: {describe_weights(pretrained)}"


def discover(cfg: Mapping[str, Any]) -> Discovered:
    """The dense model and its pruning space for the config's model, resolution, weights and space options
    (without weights: the seeded random initialisation; the stages whose result depends on the weights,
    score and export, refuse that unless ``random_init`` is set)."""
    if not cfg.get("pretrained"):
        import torch

        torch.manual_seed(RANDOM_INIT_SEED)
    return family_of_config(cfg).discover(cfg)


def lut_location(cfg: Mapping[str, Any]) -> Path:
    from mdp_cli.latency.lut import lut_filename
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name

    p = cfg["profile"]
    return Path(p["lut_dir"]) / lut_filename(device_name(check_device(p["device"])), canonical_dtype(p["dtype"]),
                                             p["batch"], p["threads"], p.get("runtime", "eager"))


def open_lut(cfg: Mapping[str, Any], path: str | Path | None = None, create: bool = False):
    from mdp_cli.latency.lut import Lut
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name

    p = cfg["profile"]
    return Lut.open(path or lut_location(cfg), device_name(check_device(p["device"])), canonical_dtype(p["dtype"]),
                    p["batch"], p["threads"], create=create, stat=p["stat"], runtime=p.get("runtime", "eager"))


def stage_profile(cfg: Mapping[str, Any], discovered: Discovered | None = None, progress: bool = True,
                  lut_path: str | Path | None = None, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Measure the latency terms of the model's space that the LUT lacks (``latency/engine.py``), in the
    profile's runtime; ``shard=(i, n)``: only the i-th of n disjoint parts (``engine.shard_of``)."""
    from mdp_cli.latency.engine import profile_into_lut, with_rounds
    from mdp_cli.latency.runtimes import check_runtime
    from mdp_cli.latency.timing import check_device

    family = family_of_config(cfg)
    p = cfg["profile"]
    check_runtime(p.get("runtime", "eager"), check_device(p["device"]), p["dtype"])
    discovered = discovered or discover(cfg)
    lut = open_lut(cfg, lut_path, create=True)
    plan = with_rounds(family.timing, p.get("rounds"))  # profile.rounds: a longer span on a shared machine
    summary = profile_into_lut(lut, family.measurements(discovered, p["grid"]), plan, check_device(p["device"]),
                               int(p["warmup"]), int(p["repeats"]), label=discovered.space.model_name,
                               progress=progress, shard=shard)
    return {"lut": str(lut.path), **summary, "device": lut.device, "dtype": lut.dtype, "batch": lut.batch,
            "threads": lut.threads, "runtime": lut.runtime}


def stage_score(cfg: Mapping[str, Any], out: str | Path, discovered: Discovered | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Importance of every dim's units from batches of ``score.data`` into an importance JSON."""
    from mdp_cli.importance.normalize import DEFAULT_NORMALIZE, normalize_dims
    from mdp_cli.importance.taylor import scoring_batches, write_importance
    from mdp_cli.latency.timing import check_device

    check_weights(cfg)
    family = family_of_config(cfg)
    discovered = discovered or discover(cfg)
    s = cfg["score"]
    method = (s.get("objective") or family.default_objective, s.get("criterion") or family.default_criterion)
    if method not in family.score_methods:
        known = ", ".join(f"objective={o} criterion={c}" for o, c in sorted(family.score_methods))
        raise MdpError(f"score.objective={method[0]} with score.criterion={method[1]} is not implemented for "
                       f"{family.title} models (available: {known})")
    resolution = family.input_shape(discovered)[1]
    t0 = time.perf_counter()
    batches = scoring_batches(str(s["data"]), resolution, int(s["batch_size"]), int(s["batches"]), int(s["seed"]),
                              family.num_classes(discovered), progress=progress, model=discovered.model)
    record = family.score(cfg, discovered, batches, check_device(cfg["profile"]["device"]))
    normalize = s.get("normalize", DEFAULT_NORMALIZE)
    dims = normalize_dims(record.pop("dims"), normalize)
    write_importance(out, cfg["model"], dims, data=str(s["data"]), batch_size=int(s["batch_size"]), resolution=resolution,
                     pretrained=cfg.get("pretrained"), synthetic=str(s["data"]) == "synthetic", family=family.name,
                     normalize=normalize, **record)
    return {"importance": str(out), "batches": record.get("batches"), "seconds": time.perf_counter() - t0}


def stage_problem(cfg: Mapping[str, Any], importance_path: str | Path | None, out: str | Path,
                  discovered: Discovered | None = None, lut_path: str | Path | None = None):
    """The solver's problem file from the space, the LUT and the importance."""
    from mdp_cli.importance.taylor import read_importance

    family = family_of_config(cfg)
    discovered = discovered or discover(cfg)
    importance = read_importance(importance_path) if importance_path else None
    problem = family.build_problem(cfg, discovered, open_lut(cfg, lut_path), importance,
                                   str(importance_path) if importance_path else None)
    calibration_file = cfg["calibrate"].get("file")
    if calibration_file:
        from mdp_cli.latency.calibration import read_calibration

        problem = read_calibration(calibration_file).apply(problem, str(calibration_file))
    problem.save(out)
    return problem


def stage_calibrate(cfg: Mapping[str, Any], out: str | Path, discovered: Discovered | None = None,
                    lut_path: str | Path | None = None, echo: Callable[[str], None] = print):
    """Fit the in-network calibration of the LUT for this model (``latency/calibration.py``): the dense model
    and ``calibrate.configs`` pruned configurations, each exported as ``mdp export`` would and timed in turns
    with the dense model as ``mdp export`` measures it (a timed call follows a call of the same network), in
    two passes over all of them (``latency/calibration_timing.py``), in the profile's device, dtype, batch,
    threads and runtime; writes ``mdp.calibration`` to ``out``."""
    import torch

    from mdp_cli.latency.calibration import METHOD, fit_calibration, random_configurations, term_class
    from mdp_cli.latency.calibration_timing import PASSES, time_in_two_passes
    from mdp_cli.latency.runtimes import check_runtime, runner
    from mdp_cli.latency.timing import check_device, threads

    c, p = cfg["calibrate"], cfg["profile"]
    repeats = int(c["repeats"] or p["repeats"])
    if not c["configs"]:
        raise MdpError("calibrate.configs (--calibrate-configs) is 0: nothing to calibrate on; give at least 4")
    if repeats < PASSES:
        raise MdpError(f"calibrate.repeats (or profile.repeats, its default) is {repeats}: the calibration times "
                       f"every configuration in {PASSES} passes; give at least {PASSES}")
    family = family_of_config(cfg)
    discovered = discovered or discover(cfg)
    lut = open_lut(cfg, lut_path)
    problem = family.build_problem(cfg, discovered, lut, None, None)
    configs = random_configurations(problem, int(c["configs"]), seed=int(c["seed"]))
    device = check_device(p["device"])
    runtime = check_runtime(p.get("runtime", "eager"), device, p["dtype"])
    x = torch.randn(int(p["batch"]), *family.input_shape(discovered))
    calls = []
    for k, config in enumerate(configs):
        sizes = {d.name: d.options[config.choice[d.name]] for d in problem.dims if d.name in config.choice}
        net = family.export_for_timing(discovered, sizes, dict(config.kept))
        calls.append(runner(net, x, runtime, device, p["dtype"], int(p["threads"])))
    echo(f"[calibrate] timing {len(configs) - 1} pruned configurations, each in turns with the dense model "
         f"({repeats} calls each, in {PASSES} passes over all of them)")
    # each in turns with dense, as the export's budget check measures: the fit aims at what the gate will see
    # (called alternately with other networks, a small network measured up to 15 % slower, docs/latency.md)
    with threads(int(p["threads"]) if device == "cpu" else None):
        measured, halves = time_in_two_passes(calls, int(p["warmup"]), repeats, device)
    classes = {t.name: term_class(t.op) for t in discovered.space.terms}
    calibration = fit_calibration(problem, classes, configs, measured, halves)
    calibration.save(out, model=cfg["model"], lut=str(lut.path), device=lut.device, dtype=lut.dtype,
                     batch=lut.batch, threads=lut.threads, runtime=runtime, stat=p["stat"],
                     configs=int(c["configs"]), seed=int(c["seed"]), repeats=repeats, method=METHOD)
    return calibration


def calibration_summary(calibration) -> str:
    """One line: what the fit found, whether it is used, and whether the machine was too noisy to tell."""
    from mdp_cli.latency.calibration import HIGH_PRUNING, NOISE_FLOOR

    f = calibration.fit
    scales = f["fitted_scales"]
    memory = (f"memory ops x{scales['memory'] / scales['compute']:.2f} of compute, "
              if "memory" in calibration.term_classes.values() else "")
    # the weights' cost as the share of the dense network's time it accounts for (files before 2026-12-05: none)
    weights = (f", weights {f['weights_share']:.0%} of the dense network's time"
               if f.get("fitted_weight_cost") else "")
    found = f"fit: {memory}{f['fitted_overhead'] * 1000 / scales['compute']:+.1f} us per term{weights}"
    before, held_out = f["median_error_before"], f.get("median_error_held_out")
    level = f"the whole dense network runs x{f['level']:.2f} its terms' sum"
    apart = f.get("measurement_disagreement")
    # a machine whose timings move this much within seconds cannot confirm any prediction more closely
    warning = (f"; warning: this machine's timings moved {apart:.1%} (fraction of dense, median) between the two "
               f"halves of the calibration's rounds, so no latency prediction can be checked more closely here: "
               f"profile and calibrate on a quiet machine" if f.get("measurement_noisy") else "")
    high = f.get("high_pruning")
    if f["accepted"] and f.get("accepted_on") == "high_pruning":
        return (f"{found}; used: fraction-of-dense error below {HIGH_PRUNING:.0%} of dense ({high['configurations']} "
                f"configurations) {high['median_error_before']:.1%} -> {high['median_error_held_out']:.1%} on "
                f"configurations it did not see ({before:.1%} -> {held_out:.1%} over all); {level}{warning}")
    if f["accepted"]:
        return (f"{found}; used: fraction-of-dense error {before:.1%} -> {held_out:.1%} on configurations it did "
                f"not see; {level}{warning}")
    floor = f.get("noise_floor", NOISE_FLOOR)  # files from before the halves were recorded: the fixed floor
    noise = f", the measurement's halves {apart:.1%} apart" if apart is not None else ""
    subset = (f"; below {HIGH_PRUNING:.0%} of dense {high['median_error_before']:.1%} and "
              f"{high['median_error_held_out']:.1%}" if high else "")
    return (f"{found}; not used (the plain table errs {before:.1%} median, the fit {held_out:.1%} on configurations "
            f"it did not see{subset}: used only above the timing noise, {floor:.1%}{noise}, and when clearly "
            f"better); {level}: tables scaled to it{warning}")

def stage_solve(cfg: Mapping[str, Any], problem_path: str | Path, out: str | Path):
    from mdp_cli.solve import load_problem, solve_problem

    s = cfg["solve"]
    problem = load_problem(problem_path)
    extra = {k: s[k] for k in ("formulation", "knapsack", "max_params", "max_flops", "min_keep", "multiple") if k in s}
    solution = solve_problem(problem, budget=s["budget"], latency_model=s["latency_model"], time_limit=s["time_limit"],
                             **extra)
    solution.save(out, problem=str(problem_path))
    return solution


def stage_sweep(cfg: Mapping[str, Any], problem_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Solve at every budget of ``solve.sweep`` with the solve section's other options, each budget warm-started
    from the one below (``solve/sweep.py``), into a sweep JSON (the Pareto front ``mdp report`` plots)."""
    from mdp_cli.solve import load_problem
    from mdp_cli.solve.sweep import parse_sweep, save_sweep, solve_sweep

    s = cfg["solve"]
    options = {k: s[k] for k in ("latency_model", "time_limit", "formulation", "knapsack", "max_params", "max_flops",
                                 "min_keep", "multiple") if k in s}
    record = solve_sweep(load_problem(problem_path), parse_sweep(s["sweep"], "solve.sweep"), s["sweep"], **options)
    save_sweep(out, record, problem=str(problem_path), sweep=s["sweep"])
    return record


def stage_export(cfg: Mapping[str, Any], solution: Mapping[str, Any] | str | Path | None, out_dir: str | Path,
                 importance_path: str | Path | None = None, discovered: Discovered | None = None,
                 check_budget: bool = True) -> dict[str, Any]:
    """Export the pruned model for a solution (``None``: nothing pruned), measure it in turns with the dense
    model, write ``report.json`` and gate on the budget."""
    from mdp_cli.export.spec import staged_directory
    from mdp_cli.importance.taylor import read_importance

    check_weights(cfg)
    family = family_of_config(cfg)
    discovered = discovered or discover(cfg)
    if isinstance(solution, (str, Path)):
        src = str(solution)
        solution = read_json(solution, "mdp.solution", 1)
    else:
        src = "<solution>"
    solution = dict(solution or {})
    choice, kept = _choice_kept(solution, src)
    importance = read_importance(importance_path) if importance_path else None
    if solution:
        check_solution_inputs(solution, src, discovered, importance, importance_path)
    net, arch = family.export(discovered, choice, kept, importance["dims"] if importance else None)
    out_dir = Path(out_dir)
    shape = family.input_shape(discovered)
    with staged_directory(out_dir) as staging:  # the old export stays whole until the new one is complete
        report = _write_export(cfg, family, discovered, net, arch, solution, src, kept, importance_path, staging,
                               shape, out_dir)
    if check_budget and report.get("within_tolerance") is False:
        raise MdpError(missed_budget_message(report) + f"; model written to {out_dir}")
    return report


def check_solution_inputs(solution: Mapping[str, Any], src: str, discovered: Discovered,
                          importance: Mapping[str, Any] | None, importance_path: str | Path | None) -> None:
    """Refuse a solution of another problem, widths that are not options, edited blocks, or the importance
    of another model (``export/checks.py``), before anything is cut."""
    from mdp_cli.export.checks import check_solution

    problem_file = (solution.get("provenance") or {}).get("problem") or solution.get("problem")
    problem = None
    if isinstance(problem_file, str) and Path(problem_file).is_file():
        problem = read_json(problem_file, "mdp.problem", 1)
    check_solution(solution, problem, discovered.space, importance, where=src, problem_where=str(problem_file),
                   importance_where=str(importance_path))


def _write_export(cfg, family, discovered, net, arch, solution, src, kept, importance_path, staging: Path,
                  shape, out_dir: Path) -> dict[str, Any]:
    from mdp_cli.export.spec import save_exported

    from mdp_cli.data import data_config

    # the input the dense model was scored on: eval and finetune of the export read it back (train/exported.py)
    config = data_config(discovered.model, int(shape[1]))
    arch = {**arch, "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    save_exported(staging, net, arch, source_model=cfg["model"], family=family.name, solution=src,
                  resolution=int(shape[1]), importance=str(importance_path) if importance_path else None)
    dense_stats, stats = family.model_stats(discovered.model, shape), family.model_stats(net, shape)
    report: dict[str, Any] = {
        "model": cfg["model"], "family": family.name, "exported": str(out_dir), "params": stats["params"],
        "flops": stats.get("flops"), "dense_params": dense_stats["params"], "dense_flops": dense_stats.get("flops"),
        "predicted_ms": solution.get("predicted_latency"), "dense_predicted_ms": solution.get("dense_latency"),
        "budget_ms": solution.get("budget"), "tolerance": cfg["export"]["tolerance"],
        "blocks_removed": sorted(b for b, k in kept.items() if not k), "widths": arch.get("widths"),
    }
    if cfg["export"]["measure"]:
        report.update(measure_against_dense(cfg, net, discovered.model, shape))
        report.update(budget_verdict(report, cfg["export"]["tolerance"]))
    if cfg["export"]["onnx"]:
        report["onnx"] = family.write_onnx(net, arch, shape, staging / "model.onnx")
        report["onnx"]["path"] = str(out_dir / "model.onnx")
    write_json(staging / "report.json", {"schema": "mdp.export_report", "version": 1,
                                         "provenance": provenance(model=cfg["model"]), **report})
    return report


def budget_verdict(report: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Is the export within ``tolerance`` of the budget? Judged on fractions of dense: the pruned model's
    measured time over the dense model's, timed in turns (which holds when the machine's speed drifts),
    against the budget over the dense predicted latency. Without the dense prediction (a hand-written
    solution), on the absolute times."""
    measured, dense, budget = report["measured_ms"], report.get("measured_dense_ms"), report.get("budget_ms")
    out: dict[str, Any] = {}
    if report.get("predicted_ms"):
        out["prediction_error"] = (report["predicted_ms"] - measured) / measured
    if dense and report.get("dense_predicted_ms"):
        out["measured_fraction"] = measured / dense
        if report.get("predicted_ms"):
            out["predicted_fraction"] = report["predicted_ms"] / report["dense_predicted_ms"]
            out["fraction_error"] = out["predicted_fraction"] / out["measured_fraction"] - 1
    if budget is None:
        out["within_tolerance"] = None
    elif "measured_fraction" in out:
        out["budget_fraction"] = budget / report["dense_predicted_ms"]
        out["within_tolerance"] = out["measured_fraction"] <= out["budget_fraction"] * (1 + tolerance)
    else:
        out["within_tolerance"] = measured <= budget * (1 + tolerance)
    return out


def missed_budget_message(report: Mapping[str, Any]) -> str:
    if report.get("budget_fraction") is not None:
        return (f"measured {report['measured_fraction']:.1%} of the dense latency (timed in turns: "
                f"{report['measured_ms']:.3f} vs {report['measured_dense_ms']:.3f} ms) misses the budget of "
                f"{report['budget_fraction']:.1%} by more than the tolerance {report['tolerance']:.0%}")
    return (f"measured latency {report['measured_ms']:.3f} ms misses the budget {report['budget_ms']:.3f} ms by more "
            f"than the tolerance {report['tolerance']:.0%}")


def _choice_kept(solution: Mapping[str, Any], src: str) -> tuple[dict[str, int], dict[str, bool]]:
    choice, kept = solution.get("choice", {}), solution.get("blocks", solution.get("kept", {}))
    if not isinstance(choice, Mapping) or not isinstance(kept, Mapping):
        raise MdpError(f"{src}: needs 'choice' (dim -> size) and 'blocks' (block -> kept)")
    try:
        return {k: int(v) for k, v in choice.items()}, {k: bool(v) for k, v in kept.items()}
    except (TypeError, ValueError):
        raise MdpError(f"{src}: 'choice' sizes must be integers") from None


def measure_against_dense(cfg: Mapping[str, Any], net, dense, shape: tuple[int, ...]) -> dict[str, Any]:
    """Latency of the pruned and the dense model timed in turns (the ratio holds under drifting load), in
    the profile's device, dtype, batch, threads and runtime (each model exported to it, as the LUT's terms
    were), on copies of both models."""
    import torch

    from mdp_cli.latency.runtimes import check_runtime, runner, runtime_version
    from mdp_cli.latency.timing import (check_device, clock_for, device_name, sample_calls_in_turns, summarize,
                                        threads, torch_dtype)

    p = cfg["profile"]
    device = check_device(p["device"])
    runtime = check_runtime(p.get("runtime", "eager"), device, p["dtype"])
    td = torch_dtype(p["dtype"])
    x = torch.randn(int(p["batch"]), *shape)
    calls = [runner(copy.deepcopy(m), x, runtime, device, p["dtype"], int(p["threads"])) for m in (net, dense)]
    with threads(int(p["threads"]) if device == "cpu" else None):
        times, dense_times = sample_calls_in_turns(calls[0], calls[1], int(p["warmup"]),
                                                   int(cfg["export"]["repeats"]), device)
        clock = clock_for(device, torch.get_num_threads())
    (med, spread, p10), (dmed, _, dp10) = summarize(times), summarize(dense_times)
    stat = p["stat"]
    return {"device": device_name(device), "dtype": str(td).removeprefix("torch."), "clock": clock,
            "batch": int(p["batch"]), "runtime": runtime, "runtime_version": runtime_version(runtime),
            "measured_ms": med if stat == "median" else p10, "spread_ms": spread,
            "measured_dense_ms": dmed if stat == "median" else dp10, "stat": stat, "timed_in_turns": True}


# ---------------------------------------------------------------------------------------------------------
# mdp run
# ---------------------------------------------------------------------------------------------------------


def read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    stages = read_json(path, STATE_SCHEMA, STATE_VERSION).get("stages")
    if not isinstance(stages, dict):
        raise MdpError(f"{path}: 'stages' must be an object; delete the file to re-run every stage")
    return {name: (value if isinstance(value, dict) else {"inputs": value, "outputs": None})
            for name, value in stages.items()}


def _hash_outputs(files: list[Path]) -> dict[str, str | None]:
    return {f.name: file_hash(f) if f.is_file() else None for f in files}


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
    state = read_state(state_path)
    lut = lut_location(cfg)
    paths = {"importance": run_dir / "importance.json", "problem": run_dir / "problem.json",
             "solution": run_dir / "solution.json", "export": run_dir / "exported" / "arch.json",
             "calibration": run_dir / "calibration.json"}
    # the run fits its own calibration unless one is given (calibrate.file) or it is off (configs 0)
    calibrating = bool(cfg["calibrate"]["configs"]) and not cfg["calibrate"]["file"]
    if calibrating:
        cfg = merge(cfg, {"calibrate": {"file": str(paths["calibration"])}})
    calibration_inputs = [Path(cfg["calibrate"]["file"])] if cfg["calibrate"]["file"] else []
    model_key = {k: cfg.get(k) for k in ("model", "resolution", "pretrained", "random_init", "num_classes", "space")}
    if cfg.get("pretrained"):
        from mdp_cli.weights import weights_hash

        model_key["weights"] = weights_hash(cfg["pretrained"], cfg["model"])
    cache: dict[str, Any] = {}
    check_weights(cfg)
    if (cfg.get("refine") or {}).get("enabled") and not cfg["export"]["measure"]:
        raise MdpError("refine.enabled (--refine) measures every export; set export.measure: true or drop --refine")
    echo(weights_note(cfg))

    def discovered() -> Discovered:
        if "discovered" not in cache:
            cache["discovered"] = discover(cfg)
            write_json(run_dir / "space.json", {"schema": "mdp.space", "version": 1,
                                                "provenance": provenance(model=cfg["model"]),
                                                **cache["discovered"].space.to_dict()})
        return cache["discovered"]

    def step(name: str, inputs_hash: Callable[[], str], outputs: list[Path], fn: Callable[[], Any],
             check_outputs: bool = True) -> None:
        """Run ``fn`` unless its inputs are unchanged and its outputs are the very files it wrote (a
        hand-edited or corrupted output is re-made). ``fn`` returns a message, or (message, cacheable)."""
        recorded = state.get(name) or {}
        if not force and recorded.get("inputs") == inputs_hash() and all(p.exists() for p in outputs) \
                and (not check_outputs or recorded.get("outputs") == _hash_outputs(outputs)):
            echo(f"[{name}] unchanged inputs and outputs, skipped")
            return
        t0 = time.perf_counter()
        result = fn()
        message, cacheable = result if isinstance(result, tuple) else (result, True)
        if cacheable:  # after the stage: profiling itself changes the LUT it is keyed on
            state[name] = {"inputs": inputs_hash(), "outputs": _hash_outputs(outputs) if check_outputs else None}
        else:
            state.pop(name, None)
        write_json(state_path, {"schema": STATE_SCHEMA, "version": STATE_VERSION, "provenance": provenance(),
                                "stages": state})
        echo(f"[{name}] done in {time.perf_counter() - t0:.1f} s" + (f": {message}" if isinstance(message, str) else ""))

    def do_profile():
        s = stage_profile(cfg, discovered(), progress=progress)
        rechecked = f" ({s['rechecked']} re-timed)" if s.get("rechecked") else ""
        return f"{s['measured']} configurations measured{rechecked}, {s['reused']} reused from {s['lut']}"

    # The LUT is content-addressed by its rows: profiling re-runs (cheaply) when the LUT file changed.
    def do_score():
        stage_score(cfg, paths["importance"], discovered(), progress=progress)
        return str(paths["importance"])

    def do_calibrate():
        calibration = stage_calibrate(cfg, paths["calibration"], discovered(), echo=echo)
        return calibration_summary(calibration)

    def do_problem():
        stage_problem(cfg, paths["importance"], paths["problem"], discovered())
        return str(paths["problem"])

    def do_solve():
        sol = stage_solve(cfg, paths["problem"], paths["solution"])
        return f"predicted {sol.predicted_latency:.3f} ms of dense {sol.dense_latency:.3f} ms (budget {sol.budget:.3f} ms)"

    solve_key = {k: v for k, v in cfg["solve"].items() if k != "sweep"}

    def do_sweep():
        points = stage_sweep(cfg, paths["problem"], run_dir / "sweep.json")["points"]
        solved = [p for p in points if p["status"] != "infeasible"]
        return f"{len(solved)} of {len(points)} budgets solved into {run_dir / 'sweep.json'}"

    def table_stages(last: str) -> None:
        """profile, problem, solve: the stages that read the LUT (and score, the first time)."""
        # The LUT is shared by every model and run: its rows are inputs, not this run's outputs.
        step("profile", lambda: _hash_inputs([model_key, cfg["profile"]], [lut]), [lut], do_profile, check_outputs=False)
        if calibrating:
            from mdp_cli.latency.calibration import METHOD as calibration_method

            calibrate_key = {**{k: v for k, v in cfg["calibrate"].items() if k != "file"}, "method": calibration_method}
            step("calibrate", lambda: _hash_inputs([model_key, cfg["profile"], calibrate_key], [lut]),
                 [paths["calibration"]], do_calibrate)
        step("score", lambda: _hash_inputs([model_key, cfg["score"]], []), [paths["importance"]], do_score)
        step("problem", lambda: _hash_inputs([model_key, cfg["profile"]["stat"]],
                                             [lut, paths["importance"], *calibration_inputs]),
             [paths["problem"]], do_problem)
        if last != "problem":
            # the sweep is its own stage: changing the range does not re-solve the budget
            step("solve", lambda: _hash_inputs(solve_key, [paths["problem"]]), [paths["solution"]], do_solve)

    table_stages(until)
    if until == "problem":
        return {"problem": str(paths["problem"])}
    result: dict[str, Any] = {}

    def do_export():
        report = stage_export(cfg, paths["solution"], run_dir / "exported", paths["importance"], discovered(),
                              check_budget=False)
        result.update(report)
        # a missed budget is not cached: the next run measures again (it may have been a loaded machine)
        return str(run_dir / "exported"), report.get("within_tolerance") is not False

    def do_refine():
        from mdp_cli.refine import run_refine

        record = run_refine(cfg, run_dir, discovered(), paths["importance"], echo=echo, progress=progress)
        state.pop("export", None)  # exported/ now holds the refined export, not the plain one of solution.json
        # The loop re-measured LUT rows: bring the stages that read the LUT up to date, so that an unchanged
        # re-run finds them (and this stage) unchanged. solution.json: the plain solve on the corrected table.
        table_stages("solve")
        chosen = read_json(run_dir / "exported" / "report.json", "mdp.export_report", 1)["refine"]
        message = (f"{record['outcome']} after {len(record['rounds'])} round(s), round {record['final_round']} "
                   f"exported: {record['reason']}")
        # like a missed export, a refined export that misses the budget is not cached: the next run tries again
        return message, chosen["within_tolerance"]

    exported = run_dir / "exported"
    export_files = [exported / "arch.json", exported / "model.safetensors", exported / "report.json"]
    if (cfg.get("refine") or {}).get("enabled"):
        step("refine", lambda: _hash_inputs([model_key, cfg["profile"], cfg["solve"], cfg["export"], cfg["refine"]],
                                            [paths["importance"], paths["problem"], paths["solution"]]),
             [run_dir / "refine.json", *export_files], do_refine)
    else:
        step("export", lambda: _hash_inputs([model_key, cfg["export"], cfg["profile"]],
                                            [paths["solution"], paths["importance"]]), export_files, do_export)
    if cfg["solve"].get("sweep"):  # after refine, which may have re-measured rows of the problem
        sweep_key = {k: v for k, v in cfg["solve"].items() if k != "budget"}
        step("sweep", lambda: _hash_inputs(sweep_key, [paths["problem"]]), [run_dir / "sweep.json"], do_sweep)
    report_path = run_dir / "exported" / "report.json"
    report = read_json(report_path, "mdp.export_report", 1) if report_path.is_file() else result
    if report.get("measured_ms") is not None:
        echo(format_report(report))
    refined = report.get("refine") if (cfg.get("refine") or {}).get("enabled") else None
    if refined:
        echo(f"refine     {refined['outcome']} (round {refined['round']}, solved at {refined['budget_solved']:.1%} "
             f"for the budget {refined['budget_fraction']:.1%}): {refined['reason']}")
        if check_budget and not refined["within_tolerance"]:
            raise MdpError(f"refined export measured {report['measured_fraction']:.1%} of the dense latency (timed in "
                           f"turns), misses the budget of {refined['budget_fraction']:.1%} by more than the tolerance "
                           f"{report['tolerance']:.0%} ({refined['reason']})")
    elif check_budget and report.get("within_tolerance") is False:
        raise MdpError(missed_budget_message(report))
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
            f"{r.get('device', '')}, {r.get('runtime', 'eager')}), "
            + (f"predicted {pred:.3f} ms ({r['prediction_error']:+.1%}), " if pred else "")
            + f"dense measured {r['measured_dense_ms']:.3f} ms"
            + (f" -> speed-up {r['measured_dense_ms'] / r['measured_ms']:.2f}x" if r['measured_ms'] else ""))
    if r.get("budget_fraction") is not None:
        lines.append(f"fractions  measured {r['measured_fraction']:.1%} of dense (in turns), predicted "
                     f"{r.get('predicted_fraction', float('nan')):.1%} ({r.get('fraction_error', float('nan')):+.1%}), "
                     f"budget {r['budget_fraction']:.1%}")
    if r.get("budget_ms") is not None and r.get("within_tolerance") is not None:
        lines.append(f"budget     {r['budget_ms']:.3f} ms, tolerance {r['tolerance']:.0%}: "
                     + ("met" if r["within_tolerance"] else "MISSED"))
    if r.get("onnx"):
        ort = (f", runs in onnxruntime {r['onnx']['onnxruntime']}: max |ort - torch| = "
               f"{r['onnx']['onnxruntime_max_abs_diff']:.1e}" if r["onnx"].get("onnxruntime") else "")
        lines.append(f"onnx       {r['onnx']['path']} (max |onnx - torch| = {r['onnx']['max_abs_diff']:.1e}{ort})")
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
