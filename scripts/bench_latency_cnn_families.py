"""Latency prediction vs measurement for the newer CNN families (SE, Hardswish, LayerNorm, concat, depthwise).

For each model: profile its LUT (reusing rows already measured), then for N random pruned configurations
export the physically smaller network and time it in turns with the exported dense model (same rounds, so
machine load cancels); compare the predicted fraction of dense (sum of LUT terms) with the measured one.
Prints the median and worst relative error per model and writes every row to a JSON file. The issue's target
is a median within 10 %. Run it on a quiet machine; under load the numbers mean little.

    python scripts/bench_latency_cnn_families.py --resolution 64 --configs 16 \
        --models mobilenet_v3_large efficientnet_b0 convnext_tiny
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench_latency_model import random_config, summarise  # noqa: E402  (scripts/ is on sys.path)
from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.lut import Lut  # noqa: E402
from mdp_cli.latency.profile import profile_space  # noqa: E402
from mdp_cli.latency.timing import clock_for, threads, time_round_robin  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402
from mdp_cli.latency.to_problem import build_problem, choice_indices  # noqa: E402


def bench_model(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model, analysis = discover_space(name, args.resolution, max_options=args.max_options, multiple=args.multiple)
    t0 = time.perf_counter()
    summary = profile_space(analysis.space, lut_dir=args.lut_dir, warmup=args.warmup, repeats=args.repeats,
                            grid=args.grid)
    print(f"[{name}] profiled {summary['measured']} configurations ({summary['reused']} reused) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    lut = Lut.open(summary["lut"], summary["device"], summary["dtype"], 1, 1)
    problem = build_problem(analysis.space, lut, None)
    rng = random.Random(args.seed)
    x = torch.randn(1, 3, args.resolution, args.resolution)
    rows = []
    with threads(1):
        dense_net, _ = prune_cnn(model, analysis, {}, {})
        for k in range(args.configs):
            ratio = rng.uniform(0.05, 0.9)
            choice, kept = random_config(analysis, rng, ratio)
            net, _ = prune_cnn(model, analysis, choice, kept)
            (measured, _, _), (dense_ms, _, _) = time_round_robin([(net, x), (dense_net, x)],
                                                                  warmup=args.warmup, repeats=args.repeats)
            predicted = problem.latency(choice_indices(problem, choice), kept)
            rel = (predicted / problem.dense_latency) / (measured / dense_ms) - 1
            rows.append({"config": k, "measured_ms": measured, "dense_ms": dense_ms, "predicted_ms": predicted,
                         "relative_error": rel})
            print(f"[{name}] {k:3d} measured {measured / dense_ms:6.1%} of dense, predicted "
                  f"{predicted / problem.dense_latency:6.1%} ({rel:+6.1%})", flush=True)
    return {"model": name, "dense_predicted_ms": problem.dense_latency, "device": summary["device"],
            "relative": summarise([r["relative_error"] for r in rows]), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--max-options", type=int, default=4)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--grid", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lut-dir", default="luts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_latency_cnn_families.json")
    args = parser.parse_args()
    results = [bench_model(name, args) for name in args.models]
    print(f"\n{args.resolution}px, {args.configs} configurations each, 1 thread, {clock_for('cpu', 1)} clock")
    for r in results:
        s = r["relative"]
        print(f"{r['model']:22s} relative-to-dense |error| median {s['median']:.1%}, worst {s['worst']:.1%}, "
              f"mean signed {s['mean_signed']:+.1%}")
    write_json(args.out, {"schema": "mdp.bench_latency_families", "version": 1,
                          "provenance": provenance(**vars(args)), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
