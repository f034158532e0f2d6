"""Does a latency table sampled over a longer span of the machine's states hold better?

On a shared CPU the machine's state moves in episodes of tens of seconds to minutes, and it changes the cost
of small, per-call-bound ops relative to large ones; a CNN's profile (5-30 s) samples one or two episodes.
This script interleaves, ``--interleave`` times: a profile with the family's plan (``A``), a profile with
``--rounds`` passes and ``--repeats`` samples (``B``, a longer span), and one measurement pass of every
configuration in turns with dense. Each LUT is then scored against the median of all the passes, so every
table meets the same ruler, taken over the same stretch of time as the tables:

    python scripts/latency_profile_span.py --model mobilenet_v2 --resolution 64 --interleave 4 \\
        --out docs/bench/latency_profile_span_mobilenet_v2_64px.json

Writes ``mdp.bench_latency_profile_span`` v1: per table (plan, interleave step, stat) the predicted fractions
and their errors (``all`` and ``high_pruning``: count, median, worst, mean signed), the measured passes, and
each profile's seconds and re-timed rows. Random-init weights (latency does not depend on them); 1 thread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.engine import with_rounds  # noqa: E402
from mdp_cli.latency.lut import Lut  # noqa: E402
import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.latency.profile import GRID_TIMING, profile_space  # noqa: E402
from mdp_cli.latency.timing import clock_for, threads, time_round_robin  # noqa: E402
from mdp_cli.latency.to_problem import build_problem, choice_indices  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402
from bench_latency_model import aimed_ratio, platform_name, random_config  # noqa: E402
from latency_bench_common import abs_summary  # noqa: E402

HIGH_PRUNING = 0.4
STATS = ("median", "ref")


def error_summary(errors: list[float]) -> dict:
    """``abs_summary`` with the count (an empty subset: the count alone)."""
    return {"count": len(errors), **abs_summary(errors)} if errors else {"count": 0}


def score_tables(tables: list[dict], passes: list[list[float]]) -> list[dict]:
    """Each table's errors against the median of the measured passes (fraction of dense)."""
    measured = [statistics.median(p) for p in passes]
    high = [k for k, m in enumerate(measured) if m < HIGH_PRUNING]
    for table in tables:
        errors = [p / m - 1 for p, m in zip(table["fractions"], measured)]
        table["all"] = error_summary(errors)
        table["high_pruning"] = error_summary([errors[k] for k in high])
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", type=int, default=32)
    parser.add_argument("--interleave", type=int, default=3, help="profile A, profile B, measure: this many times")
    parser.add_argument("--rounds", type=int, default=8, help="plan B's passes over all rows")
    parser.add_argument("--repeats", type=int, default=120, help="plan B's samples per row (plan A: 30)")
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--block-drop", type=float, default=0.9, help="as in bench_latency_model.py")
    parser.add_argument("--max-ratio", type=float, default=0.85, help="as in bench_latency_model.py")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--measure-repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lut-dir", required=True, help="where the LUTs go (kept: the tables can be re-read)")
    parser.add_argument("--out", default="latency_profile_span.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, analysis = discover_space(args.model, args.resolution, max_options=args.max_options, multiple=args.multiple)
    rng = random.Random(args.seed)
    configs = [random_config(analysis, rng, aimed_ratio(rng, k, args.max_ratio), args.block_drop)
               for k in range(args.configs)]
    plans = {"A": (GRID_TIMING, 30), "B": (with_rounds(GRID_TIMING, args.rounds), args.repeats)}
    x = torch.randn(1, 3, args.resolution, args.resolution)
    with threads(1):
        dense, _ = prune_cnn(model, analysis, {}, {})
        nets = [prune_cnn(model, analysis, choice, kept)[0] for choice, kept in configs]
    tables, passes = [], [[] for _ in configs]
    for step in range(args.interleave):
        for name, (plan, repeats) in plans.items():
            t0 = time.perf_counter()
            summary = profile_space(analysis.space, lut_dir=Path(args.lut_dir) / f"{name}{step}", warmup=args.warmup,
                                    repeats=repeats, grid=1, plan=plan, progress=False)
            seconds = time.perf_counter() - t0
            for stat in STATS:
                problem = build_problem(analysis.space, Lut.open(summary["lut"], summary["device"], summary["dtype"],
                                                                 1, 1, stat=stat), None, with_counts=False)
                tables.append({"plan": name, "step": step, "stat": stat, "rounds": plan.rounds, "repeats": repeats,
                               "profile_seconds": seconds, "rechecked": summary.get("rechecked", 0),
                               "lut": summary["lut"],
                               "fractions": [problem.latency(choice_indices(problem, c), k) / problem.dense_latency
                                             for c, k in configs]})
            print(f"step {step}: plan {name} profiled in {seconds:.1f} s ({summary.get('rechecked', 0)} re-timed)",
                  flush=True)
        with threads(1):
            for k, net in enumerate(nets):
                (ms, _, _), (dense_ms, _, _) = time_round_robin([(net, x), (dense, x)], warmup=args.warmup,
                                                                 repeats=args.measure_repeats)
                passes[k].append(ms / dense_ms)
    score_tables(tables, passes)
    apart = [max(p) / min(p) - 1 for p in passes]
    for t in tables:
        a, h = t["all"], t["high_pruning"]
        print(f"plan {t['plan']} step {t['step']} {t['stat']:6s} median {a['median']:5.1%} worst {a['worst']:5.1%} "
              f"signed {a['mean_signed']:+5.1%}" + (f" | <40% ({h['count']}): median {h['median']:5.1%} worst "
                                                   f"{h['worst']:5.1%}" if h["count"] else ""))
    print(f"the measurement's {args.interleave} passes apart: median {statistics.median(apart):.1%}, "
          f"worst {max(apart):.1%}")
    write_json(args.out, {"schema": "mdp.bench_latency_profile_span", "version": 1,
                          "provenance": provenance(device=platform_name(), clock=clock_for("cpu", 1), **vars(args)),
                          "model": args.model, "resolution": args.resolution,
                          "measured_fractions": [statistics.median(p) for p in passes], "passes": passes,
                          "pass_disagreement": error_summary(apart), "tables": tables})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
