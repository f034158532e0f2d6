"""What the whole-model latency benches (``bench_latency_model*.py``, ``calibration_windows.py``) share:
random configurations of a space, timing each export in turns with the dense model in passes over all of
them, and the error summaries."""

from __future__ import annotations

import random
import statistics
from typing import Any, Callable, Sequence


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
