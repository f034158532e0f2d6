"""Which additive correction of the table explains a benchmark's errors? An offline re-fit (issue 16, docs/latency.md).

Reads a ``scripts/bench_latency_model.py`` result whose LUTs were kept (``--lut-dir``) and, for every run,
describes each measured configuration by what it keeps, summed over its kept terms:

- ``T``: the table (what the solver adds up), split into ``Tc`` (compute ops) and ``Tm`` (memory ops) as the
  in-network calibration classes them (``latency/calibration.py``);
- ``N``: the number of kept terms (a fixed cost per term);
- ``P``: the weights kept (parameters: bytes streamed per inference);
- ``F``: the multiply-adds.

Each correction form is a weighted sum of some of these, and is fitted to the measured fractions of dense
(relative errors, least squares; a common factor is invisible in fractions) in two ways:

- ``bench_rows``: on ``--fit-rows`` of the bench's own configurations (with the dense one), drawn ``--draws``
  times; the error is on the others (median over draws). Configurations like the ones tested, timed in the
  same window: what the form can do at best.
- ``calibration``: on the calibration's own configurations (regenerated from its seed and the kept LUT, and
  checked against the predictions the bench stored for them) and its stored measurements; the error is on all
  of the bench's configurations. What the form would do inside ``mdp calibrate``.

Prints a table and writes ``mdp.bench_latency_correction_forms`` v1 JSON: per run and form, the median,
worst and high-pruning (below 40 % of dense) median of the fraction-of-dense error, for both fits.

    python scripts/latency_correction_forms.py docs/bench/latency_mobilenet_v2_...json --out forms.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.latency.calibration import CLASSES, Configuration, random_configurations  # noqa: E402
from mdp_cli.latency.calibration import features as calibration_features  # noqa: E402
from latency_bench_common import kept_lut_problem, read_bench_result  # noqa: E402

FORMS = {"plain": ("T",), "per-term overhead": ("T", "N"), "calibration's (memory, compute, per term)": ("Tc", "Tm", "N"),
         "weights": ("T", "P"), "per term and weights": ("T", "N", "P"), "multiply-adds": ("T", "F")}
HIGH_PRUNING = 0.4
# the bench's calibration draws its configurations from this seed offset (bench_latency_model.calibrate)
CALIBRATION_SEED_OFFSET = 7919


def features(problem, classes: dict[str, str], choice: dict[str, int], kept: dict[str, bool]) -> dict[str, float]:
    """What a configuration keeps: the calibration's features (compute and memory tables, the problem's constant
    counted as compute, and the number of kept terms) plus the weights and multiply-adds of its kept terms."""
    row = calibration_features(problem, classes, Configuration(choice, kept))
    compute, memory = row[CLASSES.index("compute")], row[CLASSES.index("memory")]
    f = {"T": compute + memory, "Tc": compute, "Tm": memory, "N": row[-1], "P": 0.0, "F": 0.0}
    for term in problem.terms:
        if term.block is not None and not kept.get(term.block, True):
            continue
        index = tuple(choice[d] for d in term.dims)
        for resource, key in (("params", "P"), ("flops", "F")):
            if resource in term.resources:
                f[key] += float(term.resources[resource][index])
    return {key: float(value) for key, value in f.items()}


def fit_form(dense: np.ndarray, pruned: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Weights w of a form whose prediction X·w / X_dense·w matches the measured ``fractions``: relative errors
    least-squared in their linear form ((X·w - y·X_dense·w) / y), the scale fixed by X_dense·w = 1."""
    if dense.size == 1:
        return np.ones(1)
    # features in units of their dense value (ms, counts and parameters differ by 10^6): well conditioned
    scale = np.where(dense != 0, dense, 1.0)
    d, x = dense / scale, pruned / scale
    a = (x - np.outer(fractions, d)) / fractions[:, None]
    # minimise |a w|^2 subject to d . w = 1: the KKT system (exact data make a^T a singular, which it allows)
    n = d.size
    kkt = np.block([[2.0 * a.T @ a, d[:, None]], [d[None, :], np.zeros((1, 1))]])
    w = np.linalg.lstsq(kkt, np.r_[np.zeros(n), 1.0], rcond=None)[0][:n]
    return w / scale


def errors_of(w: np.ndarray, dense: np.ndarray, rows: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    return (rows @ w) / (dense @ w) / fractions - 1.0


def summary(errors: np.ndarray, fractions: np.ndarray) -> dict[str, float | None]:
    high = np.abs(errors[fractions < HIGH_PRUNING])
    return {"median": float(np.median(np.abs(errors))), "worst": float(np.max(np.abs(errors))),
            "high_pruning_median": float(np.median(high)) if high.size else None}


def analyse_run(run: dict, analysis, seed: int, fit_rows: int, draws: int) -> dict:
    problem, classes = kept_lut_problem(run, analysis)
    dense_features = features(problem, classes, problem.dense_choice(), {})
    rows = [r for r in run["rows"] if r["config"] != 0]
    bench = [features(problem, classes, r["choice"], r["kept"]) for r in rows]
    y = np.array([r["measured_fraction"] for r in rows])
    result: dict = {"run": run["run"], "configs": len(rows), "high_pruning_configs": int((y < HIGH_PRUNING).sum()),
                    "forms": {}}
    calibration = run.get("calibration")
    cal_features = None
    if calibration is not None:
        configs = random_configurations(problem, len(calibration["measured"]) - 1,
                                        seed=seed + CALIBRATION_SEED_OFFSET + run["run"])
        full = [{d.name: int(c.choice.get(d.name, d.full_index)) for d in problem.dims} for c in configs]
        cal_features = [features(problem, classes, choice, dict(c.kept)) for choice, c in zip(full, configs)]
        # the regenerated configurations must be the ones measured (the generator may have changed since)
        if not np.allclose([f["T"] for f in cal_features], calibration["predicted_before"], rtol=1e-6):
            cal_features = None
            result["calibration_skipped"] = "its configurations could not be regenerated (another generator)"
    for name, keys in FORMS.items():
        dense = np.array([dense_features[k] for k in keys])
        X = np.array([[f[k] for k in keys] for f in bench])
        rng = random.Random(0)
        per_draw = []
        for _ in range(draws):
            fit_on = rng.sample(range(len(rows)), min(fit_rows, len(rows) - 1))
            test = np.array([i for i in range(len(rows)) if i not in fit_on])
            w = fit_form(dense, X[fit_on], y[fit_on])
            per_draw.append(summary(errors_of(w, dense, X[test], y[test]), y[test]))
        entry = {"bench_rows": {key: statistics.median(d[key] for d in per_draw if d[key] is not None)
                                if any(d[key] is not None for d in per_draw) else None
                                for key in ("median", "worst", "high_pruning_median")}}
        if cal_features is not None:
            measured = np.asarray(calibration["measured"], float)
            Xc = np.array([[f[k] for k in keys] for f in cal_features])
            w = fit_form(Xc[0], Xc[1:], measured[1:] / measured[0])
            entry["calibration"] = summary(errors_of(w, Xc[0], X, y), y)
            entry["calibration"]["weights"] = dict(zip(keys, (float(v) for v in w)))
        result["forms"][name] = entry
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="a bench_latency_model.py JSON whose LUTs were kept (--lut-dir)")
    parser.add_argument("--fit-rows", type=int, default=8, help="bench configurations each bench-rows fit uses")
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--out", default="latency_correction_forms.json")
    args = parser.parse_args(argv)
    data, analysis = read_bench_result(args.bench)
    p = data["provenance"]
    runs = [analyse_run(run, analysis, int(p["seed"]), args.fit_rows, args.draws) for run in data["runs"]]
    print(f"{p['model']} @ {p['resolution']}px: error of the predicted fraction of dense, median / worst / median "
          f"below {HIGH_PRUNING:.0%} of dense, per run")
    for fit in ("bench_rows", "calibration"):
        print(f"fitted on {'%d of the bench configurations' % args.fit_rows if fit == 'bench_rows' else 'the calibration'}:")
        for name in FORMS:
            cells = []
            for r in runs:
                s = r["forms"][name].get(fit)
                cells.append("—" if s is None else f"{s['median']:5.1%} / {s['worst']:5.1%} / "
                             + ("—" if s["high_pruning_median"] is None else f"{s['high_pruning_median']:5.1%}"))
            print(f"  {name:44s} " + " | ".join(cells))
    write_json(args.out, {"schema": "mdp.bench_latency_correction_forms", "version": 1,
                          "provenance": provenance(bench=str(args.bench), fit_rows=args.fit_rows, draws=args.draws),
                          "model": p["model"], "resolution": p["resolution"], "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
