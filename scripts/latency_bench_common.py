"""What the whole-model latency benches (``bench_latency_model*.py``, ``calibration_windows.py``) and the offline
scripts that re-read their results share: random configurations of a space, timing each export in turns with
the dense model in passes over all of them, the error summaries, issue 16's targets, and reading a bench
result back with the LUTs it kept."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

# issue 16's targets for the error of the predicted fraction of dense, overall and below 40 % of dense
TARGET_MEDIAN, TARGET_WORST = 0.03, 0.08


def meets_targets(summary: Mapping[str, float] | None) -> bool:
    """Whether an error summary (``median``, ``worst``) meets both targets; no summary does not."""
    return summary is not None and summary["median"] <= TARGET_MEDIAN and summary["worst"] <= TARGET_WORST


def read_bench_result(path: str | Path):
    """A ``bench_latency_model.py`` result with configuration choices (version 3 or later) and the analysed
    space its provenance names: (data, analysis)."""
    from mdp_cli.space.cnn import discover_space

    data = json.loads(Path(path).read_text())
    if data.get("schema") != "mdp.bench_latency" or data.get("version", 0) < 3:
        raise SystemExit(f"{path}: not a bench_latency_model.py result of version 3 or later (rows with choices)")
    p = data["provenance"]
    _, analysis = discover_space(p["model"], int(p["resolution"]), max_options=int(p["max_options"]),
                                 multiple=int(p["multiple"]))
    return data, analysis


def kept_lut_problem(run: Mapping[str, Any], analysis):
    """The problem a bench run's kept LUT (``--lut-dir``) builds (with weight counts, as the product builds it),
    and its terms' calibration classes."""
    import mdp_cli.latency.cnn_ops  # noqa: F401  (registers the CNN latency ops)
    from mdp_cli.latency.calibration import term_class
    from mdp_cli.latency.lut import Lut
    from mdp_cli.latency.timing import device_name
    from mdp_cli.latency.to_problem import build_problem

    lut_file = Path(run["lut"])
    if not lut_file.is_file():
        raise SystemExit(f"{lut_file}: the run's LUT is not there; run the bench with --lut-dir to keep its LUTs")
    lut = Lut.open(lut_file, device_name("cpu"), "float32", 1, 1, create=False,
                   runtime="onnxruntime" if lut_file.name.endswith("__onnxruntime.csv") else "eager")
    problem = build_problem(analysis.space, lut, None)
    return problem, {t.name: term_class(t.op) for t in analysis.space.terms}


def random_configs(space, count: int, remove_prob: float, seed: int, blocks: Sequence[str],
                   export: Callable[[dict, dict], Any]) -> list[tuple[dict, dict, Any]]:
    """``count`` (choice, kept, pruned model): a random option of every dim, each of ``blocks`` removed with
    probability ``remove_prob``, exported by ``export(choice, kept)``."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        choice = {d.name: rng.choice(d.options) for d in space.dims}
        kept = {b: rng.random() >= remove_prob for b in blocks}
        configs.append((choice, kept, export(choice, kept)))
    return configs


def time_in_rounds(models: Sequence[Any], dense, x, warmup: int, samples: int, rounds: int, device: str,
                   log: Callable[[str], None] | None = None) -> tuple[list[tuple[list[float], list[float]]], int]:
    """(per model: its samples and the dense model's, samples per pass). Every model is timed in each of
    ``rounds`` passes, in turns with the dense model, so a change of the machine's speed during the bench
    spreads over all of them, as profile rounds do for the rows."""
    from mdp_cli.latency.timing import sample_in_turns

    out: list[tuple[list[float], list[float]]] = [([], []) for _ in models]
    per_round = -(-samples // rounds)
    for r in range(rounds):
        for n, model in enumerate(models):
            mine, ref = sample_in_turns(model, x, dense, x, warmup, per_round, device)
            out[n][0].extend(mine)
            out[n][1].extend(ref)
        if log:
            log(f"round {r + 1}/{rounds} measured")
    return out, per_round


def error_summary(rows: Sequence[dict[str, float]], key: str, signed: bool = False) -> dict[str, float]:
    """Median and worst absolute value of ``row[key]`` (and with ``signed`` the mean), rounded, as
    ``{key}_median_abs``, ``{key}_worst_abs`` (``{key}_mean_signed``)."""
    errs = [abs(r[key]) for r in rows]
    out = {f"{key}_median_abs": round(statistics.median(errs), 4), f"{key}_worst_abs": round(max(errs), 4)}
    if signed:
        out[f"{key}_mean_signed"] = round(statistics.mean(r[key] for r in rows), 4)
    return out


def abs_summary(errors: Sequence[float]) -> dict[str, float]:
    """Median and worst absolute value of ``errors``, and their signed mean."""
    values = [abs(e) for e in errors]
    return {"median": statistics.median(values), "worst": max(values), "mean_signed": statistics.fmean(errors)}


def errors_against_each_pass(rows: Sequence[Mapping[str, Any]], name: str) -> list[list[float]]:
    """Per pass of a ``bench_latency_model.py`` run: the error of ``name``'s predicted fraction of dense
    (``row[name + '_rel_err']``, against the median of the passes) re-taken against that pass's fraction alone.
    A table that is right for the machine as one pass found it, and wrong for another, is wrong about the
    machine's state, not the networks' shape (docs/latency.md §3, "Against each pass alone")."""
    count = len(rows[0]["passes"])
    errors: list[list[float]] = [[] for _ in range(count)]
    for row in rows:
        predicted = row["measured_fraction"] * (1 + row[f"{name}_rel_err"])
        for p, timed in enumerate(row["passes"]):
            errors[p].append(predicted / timed["fraction"] - 1)
    return errors


def per_pass_summary(rows: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    """For each pass: ``abs_summary`` of ``errors_against_each_pass`` over all rows and over those below 40 % of
    dense (by the median of the passes, as the run's own subsets), and whether both meet issue 16's targets."""
    from mdp_cli.latency.calibration import HIGH_PRUNING

    high = [k for k, row in enumerate(rows) if row["measured_fraction"] < HIGH_PRUNING]
    out = []
    for errors in errors_against_each_pass(rows, name):
        overall = abs_summary(errors)
        subset = abs_summary([errors[k] for k in high]) if high else None
        out.append({"overall": overall, "high_pruning": subset,
                    "met": meets_targets(overall) and (subset is None or meets_targets(subset))})
    return out
