"""The latency table against whole networks, for any family, with the product's own stages: profile, then
``mdp calibrate`` with many configurations.

For each model: profile its space (``mdp profile``), then time the dense model and ``--configs`` random pruned
configurations in turns (``mdp calibrate``: from 90 % of dense down to the smallest network, even in log) and
report, on the fraction of dense (what budgets are):

- ``plain``: the LUT as profiled (what ``mdp solve`` uses without calibration), over all configurations;
- ``held_out``: the in-network calibration fitted without each configuration, predicting it (leave one out);
- whether the product would use the calibration (docs/latency.md section 4), and what it found.

Random-init weights (latency does not depend on them). Run it on a quiet machine, one thread:

    python scripts/bench_calibration.py --models vit_small_patch14_dinov2,swin_tiny_patch4_window7_224 \\
        --resolution 224 --configs 16 --out docs/bench/calibration_transformers_224px.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli import pipeline  # noqa: E402
from mdp_cli.artifacts import provenance, write_json  # noqa: E402


HIGH_PRUNING = 0.4  # configurations measured below this fraction of dense: the subset the targets name


def plain_errors(fit: dict) -> dict:
    """Errors of the plain table's predicted fraction of dense, over all pruned configurations and over those
    measured below HIGH_PRUNING of dense: median and worst of |error|, and the mean signed error."""
    measured, predicted = fit["measured"], fit["predicted_before"]
    rows = [((p / predicted[0]) / (m / measured[0]) - 1.0, m / measured[0])
            for p, m in zip(predicted[1:], measured[1:])]

    def stats(errors: list[float]) -> dict:
        if not errors:
            return {"count": 0}
        return {"count": len(errors), "median": statistics.median(abs(e) for e in errors),
                "worst": max(abs(e) for e in errors), "mean_signed": statistics.fmean(errors)}

    return {"all": stats([e for e, _ in rows]), "high_pruning": stats([e for e, f in rows if f < HIGH_PRUNING]),
            "fractions": [f for _, f in rows]}


def bench_model(model: str, args: argparse.Namespace, work: Path) -> dict:
    given = {"model": model, "resolution": args.resolution, "random_init": True,
             "profile": {"warmup": args.warmup, "repeats": args.repeats, "lut_dir": str(work / "luts")},
             "calibrate": {"configs": args.configs, "seed": args.seed}}
    if args.max_options and pipeline.load_config(None, {"model": model})["family"] == "cnn":
        given["space"] = {"max_options": args.max_options}
    cfg = pipeline.load_config(None, given)
    discovered = pipeline.discover(cfg)
    t0 = time.perf_counter()
    profiled = pipeline.stage_profile(cfg, discovered, progress=False)
    profile_s = time.perf_counter() - t0
    print(f"{model} @ {args.resolution}px: profiled {profiled['measured']} rows in {profile_s:.1f} s", flush=True)
    t0 = time.perf_counter()
    calibration = pipeline.stage_calibrate(cfg, work / f"{model}.calibration.json", discovered)
    calibrate_s = time.perf_counter() - t0
    print(f"  {pipeline.calibration_summary(calibration)} ({calibrate_s:.1f} s)", flush=True)
    fit = calibration.fit
    return {"model": model, "resolution": args.resolution, "profile_seconds": profile_s,
            "calibrate_seconds": calibrate_s, "plain_median": fit["median_error_before"],
            "plain_worst": fit["worst_error_before"], "held_out_median": fit.get("median_error_held_out"),
            "held_out_worst": fit.get("worst_error_held_out"), "used": fit["accepted"], "fit": fit,
            "scales": dict(calibration.scales), "overhead_ms": calibration.overhead,
            "weight_cost_ms": calibration.weight_cost, "plain": plain_errors(fit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_small_patch14_dinov2,swin_tiny_patch4_window7_224")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--max-options", type=int, help="CNN: options per dim")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1, help="separate runs per model, each profiling a fresh LUT")
    parser.add_argument("--out", default="bench_calibration.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mdp-bench-calibration-") as tmp:
        for model in [m for m in args.models.split(",") if m]:
            for run in range(args.runs):
                work = Path(tmp) / f"{model}-run{run}"  # a fresh LUT per run
                work.mkdir()
                results.append({"run": run, **bench_model(model, args, work)})
    print()
    for r in results:
        held = r["held_out_median"]
        high = r["plain"]["high_pruning"]
        print(f"{r['model']:32s} run {r['run']}: plain table median {r['plain_median']:.1%} worst {r['plain_worst']:.1%}"
              f" signed {r['plain']['all']['mean_signed']:+.1%}"
              + (f" | <{HIGH_PRUNING:.0%} of dense ({high['count']}): median {high['median']:.1%} worst {high['worst']:.1%}"
                 if high["count"] else "")
              + f"; calibrated (leave-one-out) median {held:.1%} worst {r['held_out_worst']:.1%}; "
              f"{'used' if r['used'] else 'not used'}")
    write_json(args.out, {"schema": "mdp.bench_calibration", "version": 1, "provenance": provenance(**vars(args)),
                          "models": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
