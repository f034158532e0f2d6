"""Prediction vs ONNX Runtime: does a LUT profiled in ONNX Runtime predict the exported model's ONNX Runtime latency?

For each model: profile its space in ONNX Runtime (``--runtime onnxruntime``: every latency term exported to
ONNX and timed in an InferenceSession, CPU provider, graph optimisations on), build the problem (synthetic
importance: it only orders the channels), solve at a few budgets, export each solution, and time the export and the dense model in turns in ONNX
Runtime (``pipeline.measure_against_dense``). The error reported is the one the budget gate uses:
predicted fraction of dense over measured fraction of dense, minus 1 (the ratio of two models timed in
turns holds under a drifting load; the absolute error is reported too).

Random-init weights: latency does not depend on them. Run it on a quiet machine (1 thread, thread CPU
clock); on a loaded one the numbers mean little.

    python scripts/bench_runtime_onnx.py --models resnet18,mobilenet_v2 --resolution 64 --budgets 0.3,0.5,0.7
    python scripts/bench_runtime_onnx.py --tiny      # proves the script runs (tiny sizes, few repeats)
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
from mdp_cli.errors import InfeasibleBudgetError  # noqa: E402
from mdp_cli.latency.runtimes import runtime_version  # noqa: E402


def summarise(errors: list[float]) -> dict[str, float]:
    values = [abs(e) for e in errors]
    return {"median": statistics.median(values), "worst": max(values), "mean_signed": statistics.fmean(errors)}


def bench_model(model: str, args: argparse.Namespace, work: Path) -> dict:
    cfg = pipeline.load_config(None, {
        "model": model, "resolution": args.resolution, "random_init": True,
        "space": {"max_options": args.max_options, "multiple": args.multiple},
        "profile": {"runtime": args.runtime, "warmup": args.warmup, "repeats": args.repeats, "lut_dir": args.lut_dir,
                    "grid": args.grid},
        "export": {"repeats": args.export_repeats, "measure": True},
        "score": {"data": "synthetic", "batches": 1, "batch_size": 4},
    })
    discovered = pipeline.discover(cfg)
    t0 = time.perf_counter()
    profiled = pipeline.stage_profile(cfg, discovered, progress=False)
    print(f"{model}: profiled {profiled['measured']} rows ({profiled['reused']} reused) in "
          f"{time.perf_counter() - t0:.1f} s -> {profiled['lut']}", flush=True)
    # which channels are kept does not change the latency: synthetic scores only order them
    calibration = None
    if args.calibrate:
        calibration = pipeline.stage_calibrate(cfg, work / f"{model}.calibration.json", discovered)
        print(f"  calibration: {pipeline.calibration_summary(calibration)}", flush=True)
        cfg = pipeline.merge(cfg, {"calibrate": {"file": str(work / f"{model}.calibration.json")}})
    importance = work / f"{model}.importance.json"
    pipeline.stage_score(cfg, importance, discovered, progress=False)
    problem_path = work / f"{model}.problem.json"
    problem = pipeline.stage_problem(cfg, importance, problem_path, discovered)
    rows = []
    for budget in args.budgets:
        solve_cfg = pipeline.merge(cfg, {"solve": {"budget": budget}})
        solution_path = work / f"{model}.{budget}.solution.json"
        try:
            pipeline.stage_solve(solve_cfg, problem_path, solution_path)
        except InfeasibleBudgetError as exc:
            print(f"  budget {budget:.2f}: skipped ({exc})", flush=True)
            continue
        report = pipeline.stage_export(solve_cfg, solution_path, work / f"{model}.{budget}.export",
                                       importance, discovered=discovered, check_budget=False)
        row = {"budget": budget, **{k: report.get(k) for k in (
            "predicted_ms", "dense_predicted_ms", "measured_ms", "measured_dense_ms", "predicted_fraction",
            "measured_fraction", "fraction_error", "prediction_error", "spread_ms", "clock")}}
        rows.append(row)
        print(f"  budget {budget:.2f}: predicted {row['predicted_fraction']:.1%} of dense, measured "
              f"{row['measured_fraction']:.1%} in {args.runtime} ({row['fraction_error']:+.1%}); absolute "
              f"{row['predicted_ms']:.3f} vs {row['measured_ms']:.3f} ms ({row['prediction_error']:+.1%})", flush=True)
    if not rows:
        raise SystemExit(f"{model}: no budget of {args.budgets} is reachable; pass higher --budgets")
    return {"model": model, "dense_predicted_ms": problem.dense_latency, "lut": profiled["lut"],
            "calibration": calibration.fit if calibration else None,
            "relative_to_dense": summarise([r["fraction_error"] for r in rows]),
            "absolute": summarise([r["prediction_error"] for r in rows]), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--budgets", default="0.3,0.5,0.7")
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "eager"])
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--grid", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--export-repeats", type=int, default=60)
    parser.add_argument("--lut-dir", default="luts")
    parser.add_argument("--calibrate", type=int, default=0,
                        help="fit the in-network calibration on this many configurations (mdp calibrate) and solve "
                             "the calibrated problem")
    parser.add_argument("--tiny", action="store_true",
                        help="Prove the script runs: resolution 32, 2 options per dim, 3 repeats (numbers meaningless).")
    parser.add_argument("--out", default="bench_runtime_onnx.json")
    args = parser.parse_args()
    if args.tiny:
        args.resolution, args.max_options, args.multiple, args.warmup, args.repeats, args.export_repeats = 32, 2, 1, 1, 3, 6
    args.budgets = [float(b) for b in args.budgets.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="mdp-bench-ort-") as tmp:
        for model in [m for m in args.models.split(",") if m]:
            results.append(bench_model(model, args, Path(tmp)))
    print()
    for r in results:
        rel, ab = r["relative_to_dense"], r["absolute"]
        print(f"{r['model']:14s} {args.runtime} @ {args.resolution}px: |predicted/measured fraction - 1| median "
              f"{rel['median']:.1%}, worst {rel['worst']:.1%}; absolute median {ab['median']:.1%}, worst {ab['worst']:.1%}")
    options = {k: v for k, v in vars(args).items() if k != "budgets"}
    write_json(args.out, {"schema": "mdp.bench_runtime", "version": 1,
                          "provenance": provenance(runtime_version=runtime_version(args.runtime), budgets=args.budgets,
                                                   **options),
                          "models": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
