"""Is a miss the table's or the machine's? Stored latency benches re-scored against each pass alone.

``scripts/bench_latency_model.py`` times every configuration in three passes minutes apart and scores the
tables against the median of the passes. Where the machine's state moves between passes (the relative cost of
the networks' ops shifting with it), a table can be right for one pass and wrong for another; no table fixed
before the bench could meet the targets against all of them. This re-reads stored results (no timing, no
LUT needed: every row keeps its passes and its errors) and, per run, scores the table as the product uses it
(``targets.table``: the calibrated one where the run calibrated) against each pass alone, beside how far the
passes lie apart. A run that misses against the median but meets the targets against some pass missed because
the machine moved during the bench; one that misses against every pass missed by an error that held through
the bench: the table's, or a calibration's fitted to another window (a single pass is noisier than the
median of three, so this verdict leans that way; docs/latency.md §3, "Against each pass alone").

    python scripts/latency_pass_replay.py docs/bench/latency_*_2026-12-05.json --out pass_replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from latency_bench_common import meets_targets, per_pass_summary  # noqa: E402


def table_used(run: dict) -> str:
    """The table the run's targets were judged on (older results: calibrated where the run calibrated)."""
    if "targets" in run:
        return run["targets"]["table"]
    return "multidim_calibrated" if "calibration" in run else "multidim_median"


def replay_run(run: dict) -> dict | None:
    """One run re-scored against each pass; None where its rows keep fewer than two passes."""
    rows = run.get("rows") or []
    if not rows or len(rows[0].get("passes") or []) < 2:
        return None
    table = table_used(run)
    if f"{table}_rel_err" not in rows[0]:
        return None
    each = per_pass_summary(rows, table)
    against_median = meets_targets(run.get(table)) and (run.get(f"{table}_high_pruning") is None
                                                        or meets_targets(run.get(f"{table}_high_pruning")))
    met_passes = sum(p["met"] for p in each)
    verdict = ("met" if against_median else
               "missed: met against some pass (the machine moved during the bench)" if met_passes else
               "missed against every pass (an error that held through the bench)")
    return {"run": run["run"], "table": table, "met_against_median": against_median,
            "met_against_passes": met_passes, "passes": len(each), "verdict": verdict,
            "against_median": {"median": run[table]["median"], "worst": run[table]["worst"]},
            "per_pass": [{"median": p["overall"]["median"], "worst": p["overall"]["worst"],
                          "mean_signed": p["overall"]["mean_signed"],
                          "high_pruning_median": p["high_pruning"]["median"] if p["high_pruning"] else None,
                          "met": p["met"]} for p in each],
            "passes_apart_median": run.get("pass_disagreement", {}).get("median")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", nargs="+", help="bench_latency_model.py results (JSON)")
    parser.add_argument("--out", help="write the replay here (JSON)")
    args = parser.parse_args(argv)
    results = []
    for path in args.benches:
        data = json.loads(Path(path).read_text())
        if data.get("schema") != "mdp.bench_latency":  # a glob over docs/bench/ also matches other benches
            print(f"{path}: skipped, not a bench_latency_model.py result (schema {data.get('schema')!r})")
            continue
        for run in data.get("runs", []):  # the oldest results kept summaries only
            replayed = replay_run(run)
            if replayed is None:
                continue
            replayed["bench"] = Path(path).name
            results.append(replayed)
            print(f"{Path(path).name} run {replayed['run']} ({replayed['table']}): against the median "
                  f"{replayed['against_median']['median']:.1%} / {replayed['against_median']['worst']:.1%}; each pass "
                  + ", ".join(f"{p['median']:.1%} / {p['worst']:.1%}" for p in replayed["per_pass"])
                  + f"; passes apart {replayed['passes_apart_median'] or 0:.1%}: {replayed['verdict']}")
    counts = {v: sum(r["verdict"] == v for r in results) for v in sorted({r["verdict"] for r in results})}
    print(f"{len(results)} runs: " + "; ".join(f"{n} {v}" for v, n in counts.items()))
    if args.out:
        write_json(args.out, {"schema": "mdp.bench_latency_pass_replay", "version": 1,
                              "provenance": provenance(benches=[Path(p).name for p in args.benches]),
                              "verdicts": counts, "runs": results})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
