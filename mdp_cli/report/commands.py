"""The commands that reproduce a run directory, rebuilt from what its artifacts record: the resolved config
(config.json) for ``mdp run``, a sweep's spec and solver options, each ``mdp eval``'s options (provenance) and
each ``mdp finetune``'s config (run.json)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mdp_cli.report.gather import RunArtifacts

# solve_problem options recorded in a sweep -> `mdp solve` flags
_SOLVE_FLAGS = {"time_limit": "--time-limit", "rel_gap": "--gap", "formulation": "--formulation",
                "knapsack": "--knapsack", "threads": "--threads", "max_params": "--max-params",
                "max_flops": "--max-flops", "min_keep": "--min-keep", "multiple": "--multiple"}
_SOLVE_DEFAULTS = {"rel_gap": 0.0, "formulation": "auto", "knapsack": "dp"}
# finetune config keys -> on/off flag pairs (the rest are --key-with-dashes VALUE)
_FINETUNE_SWITCHES = {"augment": ("--augment", "--no-augment"), "nesterov": ("--nesterov", "--no-nesterov"),
                      "sync_bn": ("--sync-bn", None)}


def _line(*words: Any) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def reproduce(found: RunArtifacts, report_path: Path | None = None) -> list[tuple[str, str]]:
    """(what it does, shell text) in the order to run them."""
    import yaml

    run_dir = found.run_dir
    steps: list[tuple[str, str]] = []
    sweep_in_config = False
    if found.config is not None:
        sweep_in_config = bool(found.sweep) and str(found.config.get("solve", {}).get("sweep")) == found.sweep.get("spec")
        text = yaml.safe_dump(found.config, sort_keys=False).rstrip()
        refine = " --refine" if found.refine is not None else ""
        steps.append(("the run: its resolved config (config.json) as YAML, then every stage; run it from the "
                      "directory the run was made from (relative paths in the config are relative to it)",
                      f"cat > config.yaml <<'EOF'\n{text}\nEOF\n"
                      + _line("mdp", "run", "config.yaml", "--run-dir", run_dir) + refine))
    if found.sweep is not None and not sweep_in_config:
        sweep = found.sweep
        words = ["mdp", "solve", sweep.get("provenance", {}).get("problem") or run_dir / "problem.json",
                 "--sweep", sweep["spec"]]
        if sweep.get("latency_model", "multidim") != "multidim":
            words += ["--latency-model", sweep["latency_model"]]
        if not sweep.get("blocks_enabled", True):
            words.append("--no-blocks")
        for key, value in (sweep.get("options") or {}).items():
            if key in _SOLVE_FLAGS and value is not None and _SOLVE_DEFAULTS.get(key) != value:
                words += [_SOLVE_FLAGS[key], value]
        steps.append(("the budget sweep (sweep.json)", _line(*words, "-o", run_dir / "sweep.json")))
    for finetune in found.finetunes:
        device = (finetune.run.get("provenance") or {}).get("device")
        steps.append((f"finetuning ({finetune.path})", finetune_command(finetune.run["config"], finetune.path, device)))
    for ev in found.evals:
        steps.append((f"accuracy, {ev.stage} ({ev.path.name})", eval_command(ev.record, ev.path)))
    steps.append(("this report", _line("mdp", "report", run_dir, *(["-o", report_path] if report_path else []))))
    return steps


def eval_command(record: dict[str, Any], path: Path) -> str:
    prov = record.get("provenance") or {}
    words = ["mdp", "eval", prov.get("model", "MODEL"), "--data", prov.get("data", "DATA"),
             "--split", prov.get("split", "val")]
    for key, flag in (("pretrained", "--pretrained"), ("num_classes", "--num-classes"), ("img_size", "--img-size"),
                      ("batch_size", "--batch-size"), ("limit", "--limit"), ("device", "--device"), ("amp", "--amp")):
        if prov.get(key) is not None:
            words += [flag, prov[key]]
    return _line(*words, "-o", path)


def finetune_command(config: dict[str, Any], out: Path, device: str | None = None) -> str:
    words = ["mdp", "finetune", config.get("model", "MODEL"), "--data", config.get("data", "DATA"), "-o", out]
    if device:
        words += ["--device", device]
    for key, value in config.items():
        if key in ("model", "data", "extra") or value is None:
            continue
        if key in _FINETUNE_SWITCHES:
            on, off = _FINETUNE_SWITCHES[key]
            flag = on if value else off
            if flag:
                words.append(flag)
            continue
        words += ["--" + key.replace("_", "-"), value]
    return _line(*words)
