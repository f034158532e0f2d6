"""Re-decide stored calibrations at other noise floors and score each decision on the bench (docs/latency.md §4).

``scripts/bench_latency_model.py --calibrate N`` stores, per run, the calibration's report (its plain and
leave-one-out errors and how far its halves lay apart) and the errors on the bench's own configurations of
the plain table (``multidim_median``) and of the fit applied regardless of the rule (``multidim_fitted``).
The rule (``latency.calibration.accepted_on``) is a pure function of that report, so it can be re-decided at
another floor and each decision scored by what it would have given on the bench: the plain table's errors
where the fit is not used, the fit's where it is.

    python scripts/calibration_rule_replay.py docs/bench/latency_*.json --floors 0.04 0.03 --out replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.latency.calibration import accepted_on  # noqa: E402


def replay_run(run: dict, floors: list[float]) -> dict | None:
    """Per floor: the decision and the bench errors it gives (median, worst, median below 40 % of dense)."""
    fit = run.get("calibration")
    if not fit or "multidim_fitted" not in run or "errors_held_out" not in fit:
        return None

    def outcome(name: str) -> dict:
        high = run.get(f"{name}_high_pruning") or {}
        return {"median": run[name]["median"], "worst": run[name]["worst"], "high_pruning_median": high.get("median")}

    decisions = {}
    for floor in floors:
        decision = accepted_on(fit, floor)  # raised, as in fit_calibration, to how far its halves moved
        decisions[f"{floor:g}"] = {"accepted_on": decision,
                                   **outcome("multidim_fitted" if decision else "multidim_median")}
    return {"run": run["run"], "decisions": decisions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="+", help="bench_latency_model.py results run with --calibrate")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.04, 0.03])
    parser.add_argument("--out", default="calibration_rule_replay.json")
    args = parser.parse_args(argv)
    results, changed = [], 0
    for path in args.bench:
        data = json.loads(Path(path).read_text())
        if data.get("schema") != "mdp.bench_latency":
            raise SystemExit(f"{path}: not a bench_latency_model.py result (schema {data.get('schema')!r})")
        for run in data["runs"]:
            replayed = replay_run(run, args.floors)
            if replayed is None:
                continue
            replayed["bench"] = Path(path).name
            results.append(replayed)
            cells = list(replayed["decisions"].values())
            differs = len({c["accepted_on"] is None for c in cells}) > 1
            changed += differs
            print(f"{Path(path).name[:64]:64s} run {run['run'] + 1}: " + " | ".join(
                f"{floor}: {c['accepted_on'] or 'not used'} {c['median']:5.1%} / {c['worst']:5.1%}"
                + (f" / {c['high_pruning_median']:5.1%}" if c["high_pruning_median"] is not None else "")
                for floor, c in replayed["decisions"].items()) + ("   <- changes" if differs else ""))
    print(f"{len(results)} calibrated runs; the floors {args.floors} decide differently whether to use the fit in {changed}")
    write_json(args.out, {"schema": "mdp.bench_calibration_rule_replay", "version": 1,
                          "provenance": provenance(benches=[str(p) for p in args.bench], floors=args.floors),
                          "runs": results, "decisions_changed": changed})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
