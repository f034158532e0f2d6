"""Read what a run directory holds for ``mdp report``: every artifact validated on read, absence allowed.

Nothing here imports torch or any family: a report is made from files alone (``tests/test_layers.py``). What a
run directory may hold, and where each part comes from::

    config.json, state.json                          mdp run
    problem.json, solution.json, exported/report.json mdp run (or the stage commands)
    sweep.json                                       mdp solve RUN_DIR --sweep ..., or solve.sweep in the config
    refine.json                                      mdp run --refine
    calibration.json                                 mdp run (the calibrate stage), or mdp calibrate -o
    *.json with schema mdp.eval (any depth <= 2)     mdp eval ... -o RUN_DIR/NAME.json
    DIR/run.json + DIR/metrics.csv (mdp.finetune)    mdp finetune RUN_DIR/exported -o RUN_DIR/DIR
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from mdp_cli.artifacts import is_finite_number, read_json
from mdp_cli.errors import MdpError, SchemaError

# The part of `mdp run --refine`'s artifact the report reads (the contract with refine.py).
REFINE_SCHEMA, REFINE_VERSION = "mdp.refine", 1
# ... and of the calibrate stage's (the contract with latency/calibration.py, which is a layer above this one)
CALIBRATION_SCHEMA, CALIBRATION_VERSION = "mdp.calibration", 2
_SCAN_DEPTH = 2  # eval JSONs and finetune runs are looked for this deep under the run directory


@dataclasses.dataclass
class Eval:
    path: Path
    stage: str  # dense | pruned | finetuned | other
    record: dict[str, Any]


@dataclasses.dataclass
class Finetune:
    path: Path
    run: dict[str, Any]  # run.json
    epochs: list[dict[str, Any]]  # metrics.csv rows, numbers as floats


@dataclasses.dataclass
class RunArtifacts:
    """Everything found in a run directory; ``None`` / empty where absent. ``notes``: what did not fit together."""

    run_dir: Path
    config: dict[str, Any] | None = None  # the resolved config (config.json's "config")
    state: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None  # the problem JSON (dims in network order, blocks)
    solution: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    exports: list[tuple[Path, dict[str, Any]]] = dataclasses.field(default_factory=list)
    refine: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # calibration.json: scales, overhead, fit
    evals: list[Eval] = dataclasses.field(default_factory=list)
    finetunes: list[Finetune] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def gather(run_dir: str | Path) -> RunArtifacts:
    """Read the artifacts of ``run_dir``; a directory with none of a run's artifacts is a one-line error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MdpError(f"{run_dir}: no such run directory; give the directory 'mdp run' wrote (runs/NAME)")
    found = RunArtifacts(run_dir)
    if (run_dir / "config.json").is_file():
        found.config = _dict_field(read_json(run_dir / "config.json", "mdp.config", 1), "config", run_dir / "config.json")
    if (run_dir / "state.json").is_file():
        found.state = read_json(run_dir / "state.json", "mdp.run_state", 2)
    if (run_dir / "problem.json").is_file():
        found.problem = _read_problem(run_dir / "problem.json")
    if (run_dir / "solution.json").is_file():
        found.solution = _read_solution(run_dir / "solution.json", found)
    if (run_dir / "sweep.json").is_file():
        from mdp_cli.solve.sweep import load_sweep

        found.sweep = load_sweep(run_dir / "sweep.json")
        if found.problem and found.sweep.get("problem_hash") != found.problem["hash"]:
            found.notes.append("sweep.json was solved for another problem.json (re-run 'mdp solve RUN_DIR --sweep')")
    found.exports = _read_exports(run_dir)
    if (run_dir / "refine.json").is_file():
        found.refine = read_refine(run_dir / "refine.json")
    if (run_dir / "calibration.json").is_file():
        found.calibration = read_calibration_record(run_dir / "calibration.json")
    found.evals = _read_evals(run_dir)
    found.finetunes = _read_finetunes(run_dir)
    if not any((found.config, found.problem, found.solution, found.sweep, found.exports)):
        raise MdpError(f"{run_dir}: not a run directory (no config.json, problem.json, solution.json, sweep.json or "
                       f"exported/report.json); run 'mdp run CONFIG --run-dir {run_dir}' first")
    return found


def read_calibration_record(path: Path) -> dict[str, Any]:
    """The fields of ``calibration.json`` the report shows, validated."""
    data = read_json(path, CALIBRATION_SCHEMA, CALIBRATION_VERSION)
    scales = data.get("scales")
    if not isinstance(scales, dict) or not all(is_finite_number(scales.get(k)) for k in ("compute", "memory")):
        raise SchemaError(f"{path}: field 'scales' must give numbers for compute and memory; re-run 'mdp calibrate'")
    if not is_finite_number(data.get("overhead")):
        raise SchemaError(f"{path}: field 'overhead' must be a finite number; re-run 'mdp calibrate'")
    fit = _dict_field(data, "fit", path)
    for key in ("measured", "predicted_before", "predicted_after"):
        values = fit.get(key)
        if values is not None and not (isinstance(values, list) and all(is_finite_number(v) for v in values)):
            raise SchemaError(f"{path}: field 'fit.{key}' must be a list of numbers; re-run 'mdp calibrate'")
    for key in ("median_error_before", "median_error_held_out", "level", "measurement_disagreement", "noise_floor",
                "weights_share"):
        if fit.get(key) is not None and not is_finite_number(fit[key]):
            raise SchemaError(f"{path}: field 'fit.{key}' must be a number; re-run 'mdp calibrate'")
    return {"scales": scales, "overhead": float(data["overhead"]), "fit": fit}


def _dict_field(data: dict[str, Any], field: str, path: Path) -> dict[str, Any]:
    if not isinstance(data.get(field), dict):
        raise SchemaError(f"{path}: field '{field}' must be an object")
    return data[field]


def _read_problem(path: Path) -> dict[str, Any]:
    """The problem's dims (network order, size, options, block) and blocks, validated by the solver's reader."""
    from mdp_cli.solve.problem import problem_from_dict

    data = read_json(path, "mdp.problem", 1)
    problem = problem_from_dict(data, str(path))
    owner: dict[str, str | None] = {}
    for entry in problem.importance:  # a dim's own entry comes first; later ones are gated shares
        owner.setdefault(entry.dim, entry.block)
    return {"name": problem.name, "units": problem.units, "dense_latency": problem.dense_latency,
            "hash": problem.content_hash(), "provenance": data.get("provenance") or {},
            "dims": [{"name": d.name, "size": d.size, "options": list(d.options), "block": owner.get(d.name)}
                     for d in problem.dims],
            "blocks": [{"name": b.name, "removable": b.removable} for b in problem.blocks]}


def _read_solution(path: Path, found: RunArtifacts) -> dict[str, Any]:
    from mdp_cli.solve.solution import load_solution

    solution = load_solution(path)
    if found.problem and solution.problem_hash != found.problem["hash"]:
        found.notes.append("solution.json was solved for another problem.json (re-run 'mdp run' or 'mdp solve')")
    return solution.to_dict()


_EXPORT_NUMBERS = ("predicted_ms", "dense_predicted_ms", "budget_ms", "measured_ms", "measured_dense_ms",
                   "measured_fraction", "predicted_fraction", "budget_fraction", "params", "dense_params")


def _read_exports(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Export reports: ``exported/report.json`` first, then any other export directory in the run."""
    paths = [run_dir / "exported" / "report.json"]
    paths += sorted(p for p in _scan(run_dir, "report.json", depth=3) if p != paths[0])
    out = []
    for path in paths:
        if not path.is_file() or (path != paths[0] and _schema_of(path) != "mdp.export_report"):
            continue
        report = read_json(path, "mdp.export_report", 1)
        for field in _EXPORT_NUMBERS:
            if report.get(field) is not None and not is_finite_number(report[field]):
                raise SchemaError(f"{path}: field '{field}' must be a finite number or null")
        out.append((path, report))
    return out


def read_refine(path: Path) -> dict[str, Any]:
    """``refine.json`` of ``mdp run --refine``: rounds of (budget solved, predicted and measured fraction of
    dense, rows re-profiled, met) and the outcome with its reason."""
    data = read_json(path, REFINE_SCHEMA, REFINE_VERSION)
    rounds = data.get("rounds")
    if not isinstance(rounds, list):
        raise SchemaError(f"{path}: 'rounds' must be a list")
    for i, entry in enumerate(rounds):
        if not isinstance(entry, dict):
            raise SchemaError(f"{path}: rounds[{i}] must be an object")
        for field in ("round", "rows_reprofiled"):
            if not isinstance(entry.get(field), int) or isinstance(entry.get(field), bool):
                raise SchemaError(f"{path}: rounds[{i}].{field} must be an integer")
        for field in ("budget_solved", "predicted_fraction", "measured_fraction"):
            if not is_finite_number(entry.get(field)):
                raise SchemaError(f"{path}: rounds[{i}].{field} must be a finite number")
        if not isinstance(entry.get("met"), bool):
            raise SchemaError(f"{path}: rounds[{i}].met must be true or false")
    for field in ("outcome", "reason"):
        if not isinstance(data.get(field), str):
            raise SchemaError(f"{path}: field '{field}' must be a string")
    return data


def _scan(run_dir: Path, pattern: str, depth: int = _SCAN_DEPTH) -> list[Path]:
    found = []
    for level in range(depth + 1):
        found += [p for p in run_dir.glob("/".join(["*"] * level + [pattern]))
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)]
    return sorted(found)


def _schema_of(path: Path) -> Any:
    """The ``schema`` field of a JSON file, or None when it is not a JSON object (such files are not ours)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("schema") if isinstance(data, dict) else None


def _read_evals(run_dir: Path) -> list[Eval]:
    out = []
    for path in _scan(run_dir, "*.json"):
        if _schema_of(path) != "mdp.eval":
            continue
        record = read_json(path, "mdp.eval", 1)
        for field in ("top1", "top5", "loss"):
            if not is_finite_number(record.get(field)):
                raise SchemaError(f"{path}: field '{field}' must be a finite number; re-run 'mdp eval'")
        if not isinstance(record.get("provenance"), dict):
            raise SchemaError(f"{path}: field 'provenance' must be an object")
        prov = record["provenance"]
        out.append(Eval(path, eval_stage(str(prov.get("model", "")), run_dir, prov.get("pretrained")), record))
    order = {"dense": 0, "pruned": 1, "finetuned": 2, "other": 3}
    return sorted(out, key=lambda e: (order[e.stage], str(e.path)))


def eval_stage(model: str, run_dir: Path, pretrained: Any = None) -> str:
    """What an evaluated model is: a dense model name, the run's export, a finetuned export, or other.

    A directory is judged by its arch.json (finetuned exports record ``stage: finetune``); a path that no
    longer exists from here, by its name (``exported``; ``best``/``final``/``final_ema`` of a finetune). A
    dense name with weights that ``mdp finetune`` saved (a ``model.json`` beside them) is "other"."""
    path = Path(model)
    for candidate in (path, run_dir / path, run_dir / path.name):
        if (candidate / "arch.json").is_file():
            try:
                stage = (json.loads((candidate / "arch.json").read_text()).get("provenance") or {}).get("stage")
            except (OSError, ValueError, AttributeError):
                stage = None
            return "finetuned" if stage == "finetune" else "pruned"
    if path.name in ("best", "final", "final_ema"):
        return "finetuned"
    if path.name == "exported":
        return "pruned"
    if isinstance(pretrained, str) and (Path(pretrained).parent / "model.json").is_file():
        return "other"
    return "dense" if len(path.parts) == 1 and model and not path.suffix else "other"


def _read_finetunes(run_dir: Path) -> list[Finetune]:
    out = []
    for path in _scan(run_dir, "run.json"):
        if _schema_of(path) != "mdp.finetune":
            continue
        run = read_json(path, "mdp.finetune", 1)
        if not isinstance(run.get("config"), dict):
            raise SchemaError(f"{path}: field 'config' must be an object")
        metrics = path.parent / "metrics.csv"
        epochs = []
        if metrics.is_file():
            with open(metrics, newline="") as handle:
                for i, row in enumerate(csv.DictReader(handle)):
                    try:
                        epochs.append({k: float(v) if v not in ("", None) else None for k, v in row.items()})
                    except ValueError:
                        raise SchemaError(f"{metrics}: row {i + 1} holds a value that is not a number") from None
        out.append(Finetune(path.parent, run, epochs))
    return out
