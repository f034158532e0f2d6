"""Where should the calibration's configurations lie? An offline replay on stored benches (docs/latency.md §3-4).

``mdp calibrate`` fits its correction on a handful of configurations (default 8); which fractions of dense
they span decides what the fit sees. This replays the choice on a ``scripts/bench_latency_model.py`` result
whose LUTs were kept (``--lut-dir``): per run, the bench's own measured configurations stand in for the
calibration's. For each spread of target fractions, the configurations nearest to the targets (in log) are
taken, the product's fit (``latency.calibration.fit_calibration``, its halves from the bench's first and last
pass) and rule (used or not) are applied, and the table as the product would use it is scored on the bench's
*other* configurations against the issue's targets (median ≤ 3 %, worst ≤ 8 %, overall and below 40 % of
dense). Spreads:

- ``stored``: the fractions the run's own calibration measured (the generator it ran with);
- ``log``: ``latency.calibration.target_fractions``, even in log from 90 % of dense down to the smallest network
  (the product since 2026-12-05);
- ``linear``: even in fraction over the same range.

Draw 0 takes the targets as they are; each further draw jitters every target by a factor within
``exp(±jitter)`` (which configurations are nearest is luck; a spread should not win by it).

    python scripts/calibration_spread_replay.py runs/bench.json --draws 8 --out spread.json
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.latency.calibration import (HIGH_PRUNING, LIGHTEST, Configuration, fit_calibration,  # noqa: E402
                                         target_fractions)
from latency_bench_common import kept_lut_problem, meets_targets, read_bench_result  # noqa: E402


def spreads(problem, count: int, stored: list[float] | None) -> dict[str, list[float]]:
    """Target fractions of dense per spread (``stored``: the run's own calibration's, when it has one)."""
    log = target_fractions(problem, count)
    lowest = log[-1]
    result = {"log": log, "linear": [LIGHTEST - (LIGHTEST - lowest) * k / max(1, count - 1) for k in range(count)]}
    if stored:
        result["stored"] = list(stored)
    return result


def nearest_rows(targets: list[float], fractions: list[float]) -> list[int]:
    """For each target in turn, the not yet taken row whose fraction is nearest to it in log."""
    taken: list[int] = []
    for target in targets:
        free = [i for i in range(len(fractions)) if i not in taken]
        taken.append(min(free, key=lambda i: abs(math.log(fractions[i] / target))))
    return taken


def score(errors: np.ndarray, fractions: np.ndarray) -> dict:
    """Median and worst |error|, overall and below HIGH_PRUNING of dense, and whether both meet the targets."""
    def stats(e: np.ndarray) -> dict | None:
        return {"median": float(np.median(np.abs(e))), "worst": float(np.max(np.abs(e)))} if e.size else None

    overall, high = stats(errors), stats(errors[fractions < HIGH_PRUNING])
    # no configuration below HIGH_PRUNING: only the overall targets apply
    return {"overall": overall, "high_pruning": high,
            "met": meets_targets(overall) and (high is None or meets_targets(high))}


SUBSETS = 40  # --score-on: equal-size subsets of the other rows drawn per fit


def replay_spread(problem, classes: dict[str, str], rows: list[dict], targets: list[float],
                  score_on: int | None = None) -> dict:
    """Fit the calibration on the rows nearest to ``targets`` (rows: ``choice``, ``kept``, measured ``fraction``
    and the ``first`` and ``last`` passes' fractions), decide with the product's rule, score the table as
    the product would use it on the other rows. With ``score_on``, ``met`` is the share of SUBSETS random
    subsets of that many other rows that meet the targets: fits on more rows leave fewer to score, and a worst
    case over fewer rows is smaller, so counts are compared on scored sets of one size."""
    fractions = [r["fraction"] for r in rows]
    picked = nearest_rows(targets, fractions)
    configs = [Configuration({}, {})] + [Configuration(rows[i]["choice"], rows[i]["kept"]) for i in picked]
    halves = ([1.0] + [rows[i]["first"] for i in picked], [1.0] + [rows[i]["last"] for i in picked])
    calibration = fit_calibration(problem, classes, configs, [1.0] + [fractions[i] for i in picked], halves)
    used = calibration.apply(problem)
    dense = used.latency(used.dense_choice(), {})
    others = [i for i in range(len(rows)) if i not in picked]
    measured = np.array([fractions[i] for i in others])
    predicted = np.array([used.latency({**used.dense_choice(), **rows[i]["choice"]}, rows[i]["kept"])
                          for i in others]) / dense
    errors = predicted / measured - 1.0
    result = {"fitted_on": [round(fractions[i], 4) for i in picked], "accepted_on": calibration.fit["accepted_on"],
              **score(errors, measured)}
    if score_on is not None:
        if score_on > len(others):
            raise SystemExit(f"--score-on {score_on}: only {len(others)} configurations are left to score; "
                             f"give --score-on {len(others)} or less")
        rng = random.Random(len(picked))
        subsets = [np.array(rng.sample(range(len(others)), score_on)) for _ in range(SUBSETS)]
        result["met"] = statistics.fmean(score(errors[s], measured[s])["met"] for s in subsets)
    return result


def bench_rows(run: dict) -> list[dict]:
    return [{"choice": r["choice"], "kept": r["kept"], "fraction": r["measured_fraction"],
             "first": r["passes"][0]["fraction"], "last": r["passes"][-1]["fraction"]}
            for r in run["rows"] if r["config"] != 0]


def replay_run(run: dict, analysis, draws: int, jitter: float, seed: int, count: int | None = None,
               score_on: int | None = None) -> dict:
    problem, classes = kept_lut_problem(run, analysis)
    rows = bench_rows(run)
    stored = run.get("calibration")
    stored_fractions = [m / stored["measured"][0] for m in stored["measured"][1:]] if stored else None
    count = count or (len(stored_fractions) if stored_fractions else 8)
    if count > len(rows) - 2:
        raise SystemExit(f"run {run['run']}: {len(rows)} measured configurations cannot hold {count} to fit on and "
                         f"two to score; give --count {max(1, len(rows) - 2)} or less")
    if stored_fractions and len(stored_fractions) != count:
        stored_fractions = None  # the stored spread had another size: not comparable
    rng = random.Random(seed + run["run"])
    result = {"run": run["run"], "spreads": {}}
    for name, targets in spreads(problem, count, stored_fractions).items():
        per_draw = []
        for draw in range(draws + 1):
            factors = [1.0] * len(targets) if draw == 0 else [math.exp(rng.uniform(-jitter, jitter)) for _ in targets]
            per_draw.append(replay_spread(problem, classes, rows, [t * f for t, f in zip(targets, factors)], score_on))
        result["spreads"][name] = {"targets": targets, "as_aimed": per_draw[0],
                                   "met_share_jittered": (statistics.fmean(d["met"] for d in per_draw[1:])
                                                          if draws else None)}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="+", help="bench_latency_model.py results whose LUTs were kept (--lut-dir)")
    parser.add_argument("--draws", type=int, default=8,
                        help="jittered draws per spread, on top of the targets as aimed")
    parser.add_argument("--jitter", type=float, default=0.2, help="each target times a factor within exp(±jitter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, help="configurations each fit uses (default: as the run's calibration)")
    parser.add_argument("--score-on", type=int,
                        help="score each fit on this many of the other configurations (random subsets; the share "
                             "that meets the targets is counted): to compare --count values on equal footing")
    parser.add_argument("--out", default="calibration_spread_replay.json")
    args = parser.parse_args(argv)
    results = []
    for path in args.bench:
        data, analysis = read_bench_result(path)
        for run in data["runs"]:
            replayed = replay_run(run, analysis, args.draws, args.jitter, args.seed, args.count, args.score_on)
            replayed["bench"] = Path(path).name
            results.append(replayed)
            print(f"{Path(path).name} run {run['run']}: " + " | ".join(
                f"{name} {s['as_aimed']['accepted_on'] or 'not used'}, "
                f"{'meets' if s['as_aimed']['met'] is True else 'misses' if s['as_aimed']['met'] is False else 'meets in %.0f%% of scored subsets' % (100 * s['as_aimed']['met'])}"
                + (f" ({s['met_share_jittered']:.0%} of jittered)" if s["met_share_jittered"] is not None else "")
                for name, s in replayed["spreads"].items()), flush=True)
    names = sorted({name for r in results for name in r["spreads"]})
    totals = {}
    for name in names:
        have = [r["spreads"][name] for r in results if name in r["spreads"]]
        totals[name] = {"runs": len(have), "met_as_aimed": sum(s["as_aimed"]["met"] for s in have),
                        "met_jittered_mean": (sum(s["met_share_jittered"] for s in have)
                                              if args.draws else None)}
        print(f"{name}: targets met in {totals[name]['met_as_aimed']:.3g} of {len(have)} runs as aimed"
              + (f", {totals[name]['met_jittered_mean']:.1f} on average jittered" if args.draws else ""))
    write_json(args.out, {"schema": "mdp.bench_calibration_spread_replay", "version": 1,
                          "provenance": provenance(bench=[str(b) for b in args.bench], draws=args.draws,
                                                   jitter=args.jitter, seed=args.seed, count=args.count,
                                                   score_on=args.score_on),
                          "totals": totals, "runs": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
