"""Does an in-network calibration fitted in one time window still hold minutes later?

`mdp calibrate` fits its correction (docs/latency.md §4) to whole networks timed in one window of seconds; the
solver then uses it for as long as the LUT lives. This takes one LUT and fits ``--calibrations`` calibrations
(8 pruned configurations each, other seeds each), each in its own window, then times every calibration's
configurations once more, minutes later, and prints for each: what the rule decided (with and without the
guard on the measurement's own halves), how far the two windows' fractions of dense lie apart, and the plain
table's and the fit's errors against the later window. JSON with ``--out``.

    python scripts/calibration_windows.py --model resnet50 --resolution 64 --lut LUT.csv --calibrations 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.calibration import (ACCEPT_RATIO, NOISE_FLOOR, features, fit_calibration,  # noqa: E402
                                         fraction_errors, halves_of, random_configurations, term_class)
from mdp_cli.latency.lut import Lut  # noqa: E402
from mdp_cli.latency.timing import device_name, sample_round_robin, threads  # noqa: E402
from mdp_cli.latency.to_problem import build_problem  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402
from latency_bench_common import abs_summary  # noqa: E402  (scripts/ is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--lut", required=True, help="a LUT of this model profiled on this machine (1 thread, batch 1)")
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--calibrations", type=int, default=6)
    parser.add_argument("--configs", type=int, default=8, help="pruned configurations per calibration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, analysis = discover_space(args.model, args.resolution, max_options=args.max_options, multiple=args.multiple)
    # with weight counts, as the product builds it: the calibration fits a cost per weight kept
    problem = build_problem(analysis.space, Lut.open(args.lut, device_name("cpu"), "float32", 1, 1, create=False), None)
    classes = {t.name: term_class(t.op) for t in analysis.space.terms}
    x = torch.randn(1, 3, args.resolution, args.resolution)
    dense = prune_cnn(model, analysis, {}, {})[0]
    fitted, results = [], []
    with threads(1):
        for i in range(args.calibrations):
            configs = random_configurations(problem, args.configs, seed=args.seed + i)
            nets = [dense] + [prune_cnn(model, analysis, {d.name: d.options[c.choice[d.name]] for d in problem.dims},
                                        dict(c.kept))[0] for c in configs[1:]]
            measured, halves = halves_of(sample_round_robin([(n, x) for n in nets], warmup=args.warmup,
                                                            repeats=args.repeats))
            calibration = fit_calibration(problem, classes, configs, measured, halves)
            fit = calibration.fit
            without_guard = bool(fit["median_error_before"] > NOISE_FLOOR
                                 and fit["median_error_held_out"] <= ACCEPT_RATIO * fit["median_error_before"])
            fitted.append((configs, nets, measured, calibration))
            print(f"calibration {i}: plain {fit['median_error_before']:.1%}, leave-one-out "
                  f"{fit['median_error_held_out']:.1%}, its halves {fit['measurement_disagreement']:.1%} apart; "
                  f"used: {fit['accepted']} (without the halves guard: {without_guard})", flush=True)
            results.append({"calibration": i, "fit": fit, "used_without_halves_guard": without_guard})
        for (configs, nets, measured, calibration), result in zip(fitted, results):
            later, _ = halves_of(sample_round_robin([(n, x) for n in nets], warmup=args.warmup, repeats=args.repeats))
            # the fit applied whatever its rule said, against the plain table
            plain, corrected = ([float(np.sum(features(p, classes, c)[:-1])) for c in configs]
                                for p in (problem, calibration.fitted().apply(problem)))
            apart = [max(a / b, b / a) - 1 for a, b in zip(np.array(measured[1:]) / measured[0],
                                                           np.array(later[1:]) / later[0])]
            result.update(later_measured=later, windows_apart=abs_summary(apart),
                          plain_on_later=abs_summary(fraction_errors(plain, later)),
                          fit_on_later=abs_summary(fraction_errors(corrected, later)))
            print(f"calibration {result['calibration']}, later window: the windows apart by median "
                  f"{result['windows_apart']['median']:.1%} (worst {result['windows_apart']['worst']:.1%}); plain table "
                  f"{result['plain_on_later']['median']:.1%} (worst {result['plain_on_later']['worst']:.1%}), fit "
                  f"{result['fit_on_later']['median']:.1%} (worst {result['fit_on_later']['worst']:.1%})", flush=True)
    if args.out:
        write_json(args.out, {"schema": "mdp.bench_calibration_windows", "version": 1,
                              "provenance": provenance(device=device_name("cpu"), **vars(args)), "results": results})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
