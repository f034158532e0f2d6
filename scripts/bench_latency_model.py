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
configurations (measured latency < 40 % of dense; every other configuration aims there, ``--low-share``), for
the LUT read as measured (``median``) and relative to its reference op (``ref``, docs/latency.md), per run and the spread
over ``--runs`` separate runs (each profiling a fresh LUT), and writes everything to a JSON file. Every
configuration is timed in ``--passes`` passes minutes apart (the median is the measurement); how far the
passes lie apart is the measurement's own repeatability, reported beside the errors (docs/latency.md §1).
The in-network calibration is fitted on ``--calibrate`` configurations of its own (16, as ``mdp run`` does; 0
turns it off) and reported as the product uses it (``calibrated``) and applied regardless of its rule
(``fitted``). Each run says whether the table as the product uses it meets issue 16's targets (median <= 3 %,
worst <= 8 %, over all configurations and below 40 % of dense; ``targets`` in the JSON). With ``--runtime
onnxruntime`` the LUT is profiled in ONNX Runtime (every term its own exported graph) and every configuration
and the dense model are exported to ONNX and timed there (CPU provider, 1 intra-op thread). ``--device cuda
--dtype float16 --batch 64`` profiles and times on a GPU (CUDA events), as issue 16 item 4 asks.

    python scripts/bench_latency_model.py --model resnet50 --resolution 64 --configs 32 --runs 3
    python scripts/bench_latency_model.py --model resnet50 --resolution 64 --configs 32 --runs 3 --runtime onnxruntime
    python scripts/bench_latency_model.py --model resnet50 --resolution 224 --runs 3 --device cuda --dtype float16 --batch 64
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.lut import Lut  # noqa: E402
import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.latency.profile import GRID_TIMING, profile_space  # noqa: E402
from mdp_cli.latency.runtimes import runner, runtime_version  # noqa: E402
from mdp_cli.latency.timing import (clock_for, sample_calls_in_turns, sample_calls_round_robin,  # noqa: E402
                                    sample_round_robin, summarize, threads)
from mdp_cli.latency.calibration import (HIGH_PRUNING, fit_calibration, halves_of,  # noqa: E402
                                         random_configurations, term_class)
from mdp_cli.latency.calibration_timing import time_in_two_passes  # noqa: E402
from mdp_cli.config import CalibrateSection  # noqa: E402
from mdp_cli.solve.linear import linearize  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402
from latency_bench_common import TARGET_MEDIAN, TARGET_WORST, abs_summary, meets_targets, per_pass_summary  # noqa: E402
from mdp_cli.latency.to_problem import build_problem, choice_indices  # noqa: E402


def random_config(analysis, rng: random.Random, ratio: float, block_drop: float = 1 / 3):
    """Widths near ``1 - ratio`` of full (jittered per dim), blocks removed with probability ``ratio * block_drop``."""
    choice = {}
    for dim in analysis.space.dims:
        k = len(dim.options)
        target = (1 - ratio) * k + rng.uniform(-1.5, 1.5)
        choice[dim.name] = dim.options[min(k - 1, max(0, round(target) - 1))]
    kept = {b.name: rng.random() >= ratio * block_drop for b in analysis.blocks if b.removable}
    return choice, kept


def aimed_ratio(rng: random.Random, k: int, max_ratio: float, low_share: float = 0.5) -> float:
    """The pruning ratio configuration ``k`` (from 1) aims at: a share ``low_share`` of them, evenly interleaved,
    below 40 % of dense (the regime aggressive pruning explores; 0.5: every other one, the odd ``k``), the rest
    spread from light pruning up to ``max_ratio``."""
    low = math.floor((k + 1) * low_share) != math.floor(k * low_share)
    return rng.uniform(0.55, 0.95) if low else rng.uniform(0.05, max_ratio)


def measure_run(model, analysis, args, lut_dir: Path, run: int) -> dict:
    """One run: profile a fresh LUT, then time ``args.configs`` random configurations in turns with dense."""
    t0 = time.perf_counter()
    plan = dataclasses.replace(GRID_TIMING, **({"rounds": args.rounds} if args.rounds else {}),
                               **({"recheck": args.recheck} if args.recheck is not None else {}))
    summary = profile_space(analysis.space, lut_dir=lut_dir, warmup=args.warmup,
                            repeats=args.profile_repeats or args.repeats, grid=args.grid, plan=plan, progress=False,
                            runtime=args.runtime, device=args.device, dtype=args.dtype, batch=args.batch)
    profile_s = time.perf_counter() - t0
    print(f"run {run}: profiled {summary['measured']} rows ({summary.get('rechecked', 0)} re-timed) in "
          f"{profile_s:.1f} s -> {summary['lut']}", flush=True)
    # with weight counts, as the product builds it: the calibration fits a cost per weight kept
    problems = {stat: build_problem(analysis.space, Lut.open(summary["lut"], summary["device"], summary["dtype"],
                                                              summary["batch"], 1,
                                                              stat=stat, runtime=summary["runtime"]), None)
                for stat in STATS}
    linear = linearize(problems["median"])
    rng = random.Random(args.seed + 1000 * run)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    rows = []
    calibration = None
    with threads(1):
        dense_net, _ = prune_cnn(model, analysis, {}, {})  # the exported dense model: same code path as pruned ones
        dense_call = in_runtime(dense_net, x, args)  # built once (in ONNX Runtime an export and a session)
        if args.calibrate:
            calibration = calibrate(model, analysis, problems["median"], dense_net, dense_call, x, args, run)
            problems["calibrated"] = calibration.apply(problems["median"])
            # the fit applied whatever its rule says: what the rule gives up where it keeps the plain table
            problems["fitted"] = calibration.fitted().apply(problems["median"])
        configs = []
        for k in range(args.configs):
            ratio = 0.0 if k == 0 else aimed_ratio(rng, k, args.max_ratio, args.low_share)
            choice, kept = ({}, {}) if k == 0 else random_config(analysis, rng, ratio, args.block_drop)
            # built once (in ONNX Runtime an export and a session), timed in every pass
            configs.append((ratio, choice, kept, in_runtime(prune_cnn(model, analysis, choice, kept)[0], x, args)))
        # each pass times every configuration in turns with dense; passes minutes apart show how far the
        # measurement itself moves (the ruler's repeatability), and their median is the measured fraction
        passes = [[] for _ in configs]
        for _ in range(args.passes):
            for k, (_, _, _, call) in enumerate(configs):
                (measured, spread, _), (dense_now, _, _) = (summarize(t) for t in time_pair(call, dense_call, args))
                passes[k].append({"measured_ms": measured, "spread_ms": spread, "dense_now_ms": dense_now,
                                  "fraction": measured / dense_now})
        for k, ((ratio, choice, kept, _), timed) in enumerate(zip(configs, passes)):
            idx = choice_indices(problems["median"], choice)
            fraction = statistics.median(t["fraction"] for t in timed)
            measured = statistics.median(t["measured_ms"] for t in timed)
            row = {"config": k, "ratio": ratio, "measured_ms": measured,
                   "spread_ms": statistics.median(t["spread_ms"] for t in timed),
                   "dense_now_ms": statistics.median(t["dense_now_ms"] for t in timed), "measured_fraction": fraction,
                   "blocks_removed": sum(not v for v in kept.values()), "passes": timed,
                   # how far the passes' fractions lie apart, relative: the measurement's own repeatability
                   "pass_disagreement": max(t["fraction"] for t in timed) / min(t["fraction"] for t in timed) - 1,
                   "choice": dict(idx), "kept": dict(kept)}  # option indices: the row can be re-predicted
            for stat, problem in problems.items():
                row[f"multidim_{stat}_rel_err"] = problem.latency(idx, kept) / problem.dense_latency / fraction - 1
            row["linear_rel_err"] = linear.latency(idx, kept) / linear.dense_latency / fraction - 1
            row["multidim_ms"] = problems["median"].latency(idx, kept)
            row["multidim_err"] = (row["multidim_ms"] - measured) / measured
            rows.append(row)
            print(f"{k:3d} measured {measured:8.3f} ms ({fraction:5.1%} of dense, passes apart "
                  f"{row['pass_disagreement']:4.1%})  relative error: "
                  + "  ".join(f"{stat} {row[f'multidim_{stat}_rel_err']:+6.1%}" for stat in problems)
                  + f"  linear {row['linear_rel_err']:+6.1%}", flush=True)
    high = [r for r in rows if r["measured_fraction"] < HIGH_PRUNING]
    result = {"run": run, "profile_seconds": profile_s, "lut": summary["lut"], "rechecked": summary.get("rechecked", 0),
              "dense_measured_ms": rows[0]["dense_now_ms"], "dense_predicted_ms": problems["median"].dense_latency,
              "configs": len(rows), "high_pruning_configs": len(high),
              "rows": rows}
    for name in [f"multidim_{stat}" for stat in problems] + ["linear"]:
        result[name] = abs_summary([r[f"{name}_rel_err"] for r in rows])
        if high:
            result[f"{name}_high_pruning"] = abs_summary([r[f"{name}_rel_err"] for r in high])
    result["multidim_absolute"] = abs_summary([r["multidim_err"] for r in rows])
    if args.passes > 1:
        result["pass_disagreement"] = abs_summary([r["pass_disagreement"] for r in rows[1:]])
        if high:
            result["pass_disagreement_high_pruning"] = abs_summary([r["pass_disagreement"] for r in high])
    if calibration is not None:
        result["calibration"] = {"scales": dict(calibration.scales), "overhead_ms": calibration.overhead,
                                 "weight_cost_ms": calibration.weight_cost,
                                 **calibration.fit}
    result["targets"] = targets_verdict(result, "multidim_calibrated" if calibration is not None else "multidim_median")
    if args.passes > 1:
        # each table scored against every pass alone: a miss against the median that some pass meets is the
        # machine's state moving between passes, not the table's shape (docs/latency.md §3)
        result["per_pass"] = {f"multidim_{stat}": per_pass_summary(rows, f"multidim_{stat}") for stat in problems}
    return result


def targets_verdict(result: dict, name: str) -> dict:
    """Whether the table as the product uses it (``name``: calibrated where ``--calibrate``, as ``mdp run`` does)
    meets the targets in this run: median and worst error, over all configurations and over those below 40 %."""
    return {"table": name, "median": TARGET_MEDIAN, "worst": TARGET_WORST, "overall": meets_targets(result.get(name)),
            "high_pruning": meets_targets(result.get(f"{name}_high_pruning"))}


def time_pair(call, dense_call, args) -> tuple[list[float], list[float]]:
    """Samples (ms) of a configuration and of the dense model, timed against each other with ``args.ruler``:
    ``turns`` (the default since 2026-12-04 evening), ``timing.sample_calls_in_turns``: each timed call
    follows an untimed call of the same network, the two networks alternating, as when deployed and as
    ``mdp export`` and ``mdp calibrate`` measure; or ``alternate``, one timed call of each in turn, so every
    call follows the other network (every result before; small networks measure slower that way)."""
    if args.ruler == "turns":
        return sample_calls_in_turns(call, dense_call, args.warmup, args.repeats, args.device)
    return tuple(sample_calls_round_robin([call, dense_call], args.device, args.warmup, args.repeats))


def in_runtime(net, x, args):
    """``net(x)`` as one callable in the bench's runtime (eager, or exported to ONNX and run in a session)."""
    return runner(net, x, args.runtime, args.device, args.dtype, 1)


def calibrate(model, analysis, problem, dense_net, dense_call, x, args, run):
    """Fit the in-network calibration (mdp_cli/latency/calibration.py) on ``args.calibrate`` configurations
    of its own (another seed than the evaluated ones), measured with the bench's ruler."""
    configs = random_configurations(problem, args.calibrate, seed=args.seed + 7919 + run)
    nets = [dense_net]
    for c in configs[1:]:
        sizes = {d.name: d.options[c.choice[d.name]] for d in problem.dims}
        nets.append(prune_cnn(model, analysis, sizes, dict(c.kept))[0])
    if args.ruler == "turns":  # as mdp calibrate measures (the same function): each in turns with dense, two passes
        measured, halves = time_in_two_passes([dense_call] + [in_runtime(n, x, args) for n in nets[1:]],
                                              args.warmup, args.calibrate_repeats or args.repeats, args.device)
    else:  # all of them one call each in turn (mdp calibrate until 2026-12-04)
        measured, halves = halves_of(sample_round_robin([(n, x) for n in nets], args.device, args.dtype, args.warmup,
                                                        args.repeats, args.runtime))
    classes = {t.name: term_class(t.op) for t in analysis.space.terms}
    fitted = fit_calibration(problem, classes, configs, measured, halves)
    f = fitted.fit
    print(f"run {run}: calibrated on {len(configs)} configurations: scales {dict(fitted.scales)}, overhead "
          f"{fitted.overhead * 1000:.1f} us/term, weights {f['weights_share']:.0%} of dense; fraction error median "
          f"{f['median_error_before']:.1%} -> {f['median_error_after']:.1%} (held out "
          f"{f.get('median_error_held_out', float('nan')):.1%}); its halves {f['measurement_disagreement']:.1%} apart; "
          f"used: {f['accepted']}", flush=True)
    return fitted


STATS = ("median", "ref")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1, help="separate runs, each profiling a fresh LUT")
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--grid", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, help="profiling passes (default: the CNN family's plan)")
    parser.add_argument("--profile-repeats", type=int,
                        help="samples per LUT row (default: --repeats); with --rounds 8, 120 is mdp's shared-CPU recipe")
    parser.add_argument("--recheck", type=float, help="re-time rows whose passes differ by more (default: the plan's)")
    parser.add_argument("--lut-dir", help="where the LUTs go (default: a temporary directory per run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", type=int, default=CalibrateSection().configs,
                        help="fit the in-network calibration on this many configurations of its own, as mdp run does "
                             "(calibrate.configs), and report the table as its rule uses it (multidim_calibrated, "
                             "the one the targets are checked on) beside the plain one; 0: the plain table only")
    parser.add_argument("--calibrate-repeats", type=int,
                        help="timed calls per calibration configuration, split between its two passes (default "
                             "--repeats, as calibrate.repeats defaults to profile.repeats); at least 2")
    parser.add_argument("--max-ratio", type=float, default=0.55,
                        help="every other configuration keeps widths near 1 - U(0.05, this) of full: 0.55 takes "
                             "ResNets below 40 %% of dense (cost ~ width^2); a network whose cost follows width "
                             "linearly (MobileNetV2's depthwise blocks) needs about 0.85")
    parser.add_argument("--block-drop", type=float, default=1 / 3,
                        help="a removable block is dropped with probability ratio x this: 1/3 takes ResNets below 40 %% "
                             "of dense; a network whose thin widths still pay every op's fixed cost (MobileNetV2 at "
                             "64 px bottoms out near 48 %% by widths alone) gets there only by dropping blocks: ~0.9")
    parser.add_argument("--low-share", type=float, default=0.5,
                        help="share of the configurations aimed below 40 %% of dense (0.5: every other one)")
    parser.add_argument("--ruler", default="turns", choices=("turns", "alternate"),
                        help="how a configuration is timed against dense: each timed call after an untimed call of "
                             "the same network, as mdp export measures (turns), or one call each in turn "
                             "(alternate: the bench before 2026-12-04 evening); docs/latency.md §1 item 9")
    parser.add_argument("--runtime", default="eager", choices=("eager", "onnxruntime"),
                        help="profile the LUT and time every configuration in this runtime (CPU, 1 thread)")
    parser.add_argument("--device", default="cpu",
                        help="profile and time on this device (cuda: CUDA events; issue 16 item 4 asks for batch 1 "
                             "and 64 in float16 there)")
    parser.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3,
                        help="time every configuration this many times, in passes minutes apart; the median is "
                             "the measurement (of three: one disturbed pass is outvoted, where a mean of two "
                             "carries half its error), the passes' disagreement its repeatability")
    parser.add_argument("--out", default="bench_latency_model.json")
    args = parser.parse_args()
    if args.calibrate_repeats is not None and args.calibrate_repeats < 2:
        parser.error(f"--calibrate-repeats {args.calibrate_repeats}: the calibration's two passes need at least 2")
    if not 0.0 <= args.low_share <= 1.0:
        parser.error(f"--low-share {args.low_share}: must lie in [0, 1]")

    torch.manual_seed(args.seed)
    model, analysis = discover_space(args.model, args.resolution, max_options=args.max_options, multiple=args.multiple)
    runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            lut_dir = Path(args.lut_dir) / f"run{run}" if args.lut_dir else Path(tmp)
            runs.append(measure_run(model, analysis, args, lut_dir, run))
    names = [f"multidim_{stat}" for stat in STATS] + (["multidim_calibrated", "multidim_fitted"] if args.calibrate else []) + ["linear"]
    print(f"\n{args.model} @ {args.resolution}px, {args.runs} run(s) x {args.configs} configurations, "
          f"{platform_name(args.device)}, {args.runtime}, {args.dtype}, batch {args.batch}, 1 thread, "
          f"{clock_for(args.device, 1)} clock; error of the predicted fraction of dense:")
    for r in runs:
        for name in names:
            s, h = r[name], r.get(f"{name}_high_pruning")
            line = f"run {r['run']} {name:16s} median {s['median']:5.1%} worst {s['worst']:5.1%} signed {s['mean_signed']:+5.1%}"
            if h:
                line += f" | <40% of dense ({r['high_pruning_configs']}): median {h['median']:5.1%} worst {h['worst']:5.1%}"
            print(line)
        if "pass_disagreement" in r:
            p, h = r["pass_disagreement"], r.get("pass_disagreement_high_pruning")
            print(f"run {r['run']} the measurement itself: {args.passes} passes apart by median {p['median']:5.1%} "
                  f"worst {p['worst']:5.1%}" + (f" | <40% of dense: median {h['median']:5.1%} worst {h['worst']:5.1%}"
                                                if h else ""))
        if "per_pass" in r:
            table = r["targets"]["table"]
            each = r["per_pass"][table]
            print(f"run {r['run']} {table} against each pass alone: median "
                  + " / ".join(f"{p['overall']['median']:.1%}" for p in each) + ", worst "
                  + " / ".join(f"{p['overall']['worst']:.1%}" for p in each)
                  + f"; targets met against {sum(p['met'] for p in each)} of {len(each)} passes")
    verdicts = [r["targets"] for r in runs]
    print(f"targets (median <= {TARGET_MEDIAN:.0%}, worst <= {TARGET_WORST:.0%}) for {verdicts[0]['table']}: met in "
          f"{sum(v['overall'] for v in verdicts)} of {len(runs)} runs overall, "
          f"{sum(v['high_pruning'] for v in verdicts)} of {len(runs)} below 40 % of dense")
    spread = {}
    for name in names + ["pass_disagreement"]:
        for subset in ("", "_high_pruning"):
            values = [r[name + subset] for r in runs if name + subset in r]
            if values:
                spread[name + subset] = {f"{stat}_{bound}": fn(v[stat] for v in values)
                                         for stat in ("median", "worst") for bound, fn in (("min", min), ("max", max))}
    write_json(args.out, {"schema": "mdp.bench_latency", "version": 5,
                          "provenance": provenance(hardware=platform_name(args.device), clock=clock_for(args.device, 1),
                                                   runtime_version=runtime_version(args.runtime), **vars(args)),
                          "model": args.model, "resolution": args.resolution, "spread_over_runs": spread, "runs": runs})
    print(f"wrote {args.out}")


def platform_name(device: str = "cpu") -> str:
    from mdp_cli.latency.timing import device_name

    return device_name(device)


if __name__ == "__main__":
    main()
