"""Accuracy of the latency models: multi-dimensional LUT (MDP) vs linear per-dim costs (HALP).

For N random pruned configurations of a model (random widths around a random target pruning ratio, some
blocks removed), export the physically smaller network, measure it on this CPU (1 thread, thread CPU clock,
median of repeats after warm-up) and compare with

- multidim: the sum of the LUT terms at the chosen sizes (what `mdp solve` optimises), and
- linear:   each term's table frozen at full size in every other dim (HALP-style; mdp_cli.solve.linear).

Two errors per model: absolute (predicted vs measured ms) and relative to dense (predicted fraction of the
dense prediction vs measured fraction of the dense model, the two networks timed in turns in the same
rounds). On a shared machine the absolute error includes the load drift between profiling and measuring
(about +-6 % here for the very same network measured minutes apart); the relative one cancels the drift of
the measuring side.

Prints the median and worst |predicted - measured| / measured for both, overall and for heavily pruned
configurations (measured latency < 40 % of dense), and writes the rows to a JSON file.

    python scripts/bench_latency_model.py --model resnet50 --resolution 64 --configs 32
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.lut import Lut  # noqa: E402
import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.latency.profile import profile_space  # noqa: E402
from mdp_cli.latency.timing import clock_for, threads, time_round_robin  # noqa: E402
from mdp_cli.solve.linear import linearize  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402
from mdp_cli.latency.to_problem import build_problem, choice_indices  # noqa: E402


def random_config(analysis, rng: random.Random, ratio: float):
    """Widths near ``1 - ratio`` of full (jittered per dim), blocks removed with probability ratio / 3."""
    choice = {}
    for dim in analysis.space.dims:
        k = len(dim.options)
        target = (1 - ratio) * k + rng.uniform(-1.5, 1.5)
        choice[dim.name] = dim.options[min(k - 1, max(0, round(target) - 1))]
    kept = {b.name: rng.random() >= ratio / 3 for b in analysis.blocks if b.removable}
    return choice, kept


def summarise(errors):
    values = [abs(e) for e in errors]
    return {"median": statistics.median(values), "worst": max(values), "mean_signed": statistics.fmean(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", type=int, default=32)
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--grid", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lut-dir", default="luts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_latency_model.json")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, analysis = discover_space(args.model, args.resolution, max_options=args.max_options, multiple=args.multiple)
    t0 = time.perf_counter()
    summary = profile_space(analysis.space, lut_dir=args.lut_dir, warmup=args.warmup, repeats=args.repeats,
                            grid=args.grid)
    print(f"profiled {summary['measured']} configurations ({summary['reused']} reused) in "
          f"{time.perf_counter() - t0:.1f} s -> {summary['lut']}")
    lut = Lut.open(summary["lut"], summary["device"], summary["dtype"], 1, 1)
    problem = build_problem(analysis.space, lut, None)
    linear = linearize(problem)
    rng = random.Random(args.seed)
    x = torch.randn(1, 3, args.resolution, args.resolution)
    rows = []
    with threads(1):
        dense_net, _ = prune_cnn(model, analysis, {}, {})  # the exported dense model: same code path as pruned ones
        dense_ms = None
        for k in range(args.configs):
            ratio = 0.0 if k == 0 else rng.uniform(0.05, 0.95)
            choice, kept = ({}, {}) if k == 0 else random_config(analysis, rng, ratio)
            net, _ = prune_cnn(model, analysis, choice, kept)
            (measured, spread, _), (dense_now, _, _) = time_round_robin([(net, x), (dense_net, x)],
                                                                         warmup=args.warmup, repeats=args.repeats)
            dense_ms = dense_ms or dense_now
            idx = choice_indices(problem, choice)
            multi, lin = problem.latency(idx, kept), linear.latency(idx, kept)
            rel = (multi / problem.dense_latency) / (measured / dense_now) - 1
            rel_lin = (lin / problem.dense_latency) / (measured / dense_now) - 1
            rows.append({"config": k, "ratio": ratio, "measured_ms": measured, "spread_ms": spread,
                         "dense_now_ms": dense_now, "multidim_rel_err": rel, "linear_rel_err": rel_lin,
                         "multidim_ms": multi, "linear_ms": lin, "blocks_removed": sum(not v for v in kept.values()),
                         "multidim_err": (multi - measured) / measured, "linear_err": (lin - measured) / measured})
            print(f"{k:3d} measured {measured:8.3f} ms ({measured / dense_now:5.1%} of dense)  multidim {multi:8.3f} "
                  f"({rows[-1]['multidim_err']:+6.1%}, rel {rel:+6.1%})  linear {lin:8.3f} "
                  f"({rows[-1]['linear_err']:+6.1%}, rel {rel_lin:+6.1%})", flush=True)
    result = {"model": args.model, "resolution": args.resolution, "dense_measured_ms": dense_ms,
              "dense_predicted_ms": problem.dense_latency, "clock": clock_for("cpu", 1), "device": summary["device"]}
    high = [r for r in rows if r["measured_ms"] < 0.4 * r["dense_now_ms"]]
    for name in ("multidim", "linear"):
        result[name] = summarise([r[f"{name}_err"] for r in rows])
        result[f"{name}_relative"] = summarise([r[f"{name}_rel_err"] for r in rows])
        if high:
            result[f"{name}_high_pruning"] = summarise([r[f"{name}_err"] for r in high])
            result[f"{name}_relative_high_pruning"] = summarise([r[f"{name}_rel_err"] for r in high])
    result["high_pruning_configs"] = len(high)
    print(f"\n{args.model} @ {args.resolution}px, {len(rows)} configurations, {summary['device']}, 1 thread, "
          f"{result['clock']} clock; dense measured {dense_ms:.2f} ms, predicted {problem.dense_latency:.2f} ms")
    for name in ("multidim", "linear", "multidim_relative", "linear_relative"):
        s = result[name]
        line = f"{name:18s} |error| median {s['median']:.1%}, worst {s['worst']:.1%}, mean signed {s['mean_signed']:+.1%}"
        if high:
            h = result[name.replace("_relative", "") + ("_relative" if "relative" in name else "") + "_high_pruning"]
            line += f"; high pruning (<40% of dense, {len(high)} configs): median {h['median']:.1%}, worst {h['worst']:.1%}"
        print(line)
    write_json(args.out, {"schema": "mdp.bench_latency", "version": 1,
                          "provenance": provenance(lut=summary["lut"], **vars(args)), **result, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
