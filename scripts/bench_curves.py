"""Two mdp settings compared along their accuracy-vs-latency curves rather than at one budget.

One pruned network per setting and budget is a lottery: the solver's discrete optimum moves in jumps, and two
settings solved at the same table budget measure at different latencies. Each setting is therefore run at
several budgets (``bench_ablation.py --variants mdp`` into one or more output directories), and every point of
one setting is compared with the other setting's curve interpolated at the same *measured* latency (linear
between its neighbouring points; points outside the other's measured range are left out):

    python scripts/bench_curves.py --a docs/bench/criteria/default docs/bench/criteria/sweep_resnet18_labels_taylor \\
        --b docs/bench/criteria/distill_fisher docs/bench/criteria/sweep_resnet18_distill_fisher \\
        --label-a "labels, taylor" --label-b "distill, fisher" --out docs/bench/criteria/curves_resnet18

Output: results.json, results.md (every point, its difference to the other curve, and the mean difference of
B over A in both directions, for accuracy right after pruning and after the short finetune) and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402


def load_points(dirs: list[Path]) -> list[dict]:
    """Every cell of the runs: measured latency (re-measured where the run did), accuracies."""
    points = {}  # a later directory replaces an earlier one at the same budget (e.g. a 10-seed re-run)
    for d in dirs:
        data = json.loads((d / "results.json").read_text())
        for cell in data["cells"]:
            r = cell.get("mdp", {})
            if "top1_short" not in r:
                continue
            lat = r.get("latency_fraction_remeasured", r["latency_fraction"])
            points[cell["budget"]] = {"budget": cell["budget"], "lat": lat, "pruned": r["top1_pruned"],
                                      "short": bc.mean_sd(r["top1_short"])[0], "seeds": r["top1_short"],
                                      "blocks": len(r["blocks_removed"]), "dir": str(d)}
    return sorted(points.values(), key=lambda p: p["lat"])


def interpolate(curve: list[dict], lat: float, key: str) -> float | None:
    for lo, hi in zip(curve, curve[1:]):
        if lo["lat"] <= lat <= hi["lat"]:
            t = 0.0 if hi["lat"] == lo["lat"] else (lat - lo["lat"]) / (hi["lat"] - lo["lat"])
            return lo[key] + t * (hi[key] - lo[key])
    return None


def differences(points: list[dict], other: list[dict], key: str) -> list[float | None]:
    return [None if (v := interpolate(other, p["lat"], key)) is None else p[key] - v for p in points]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", nargs="+", type=Path, required=True)
    p.add_argument("--b", nargs="+", type=Path, required=True)
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    a, b = load_points(args.a), load_points(args.b)
    summary = {}
    for key in ("pruned", "short"):
        b_over_a = [d for d in differences(b, a, key) if d is not None]
        a_over_b = [d for d in differences(a, b, key) if d is not None]
        both = b_over_a + [-d for d in a_over_b]  # B − A from both sides
        summary[key] = {"b_minus_a_at_b_points": b_over_a, "a_minus_b_at_a_points": a_over_b,
                        "mean_b_minus_a": sum(both) / len(both) if both else None,
                        "b_ahead": sum(d > 0 for d in both), "n": len(both)}
    for pts, other in ((a, b), (b, a)):
        for pt, dp, ds in zip(pts, differences(pts, other, "pruned"), differences(pts, other, "short")):
            pt["vs_other_pruned"], pt["vs_other_short"] = dp, ds
    bc.write_json(args.out / "results.json", {"a": {"label": args.label_a, "dirs": [str(d) for d in args.a], "points": a},
                                              "b": {"label": args.label_b, "dirs": [str(d) for d in args.b], "points": b},
                                              "summary": summary})
    rows = [{"setting": args.label_a, **pt} for pt in a] + [{"setting": args.label_b, **pt} for pt in b]
    lines = [f"# {args.label_b} against {args.label_a} along the accuracy-vs-measured-latency curve", "",
             f"Command: `python scripts/bench_curves.py {' '.join(sys.argv[1:])}`", "",
             "Each point: one pruned network (one table budget), measured in turns with dense; top-1 right after "
             "pruning and mean over finetune seeds after the short finetune. 'vs other': this point minus the other "
             "setting's curve interpolated at the same measured latency (– outside its range).", "",
             bc.markdown_table(rows, [("setting", "setting"), ("budget", "table budget"), ("lat", "measured lat/dense"),
                                      ("blocks", "blocks removed"), ("pruned", "top-1 pruned"),
                                      ("vs_other_pruned", "vs other"), ("short", "top-1 short ft (mean)"),
                                      ("vs_other_short", "vs other")]), ""]
    for key, name in (("pruned", "right after pruning"), ("short", "after the short finetune")):
        s = summary[key]
        if s["n"]:
            lines.append(f"- {name}: {args.label_b} − {args.label_a} = {s['mean_b_minus_a']:+.2f} points on average "
                         f"over {s['n']} comparisons at equal measured latency, {args.label_b} ahead in {s['b_ahead']}.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    xlabel = "measured latency / dense (in turns)"
    bc.line_plots([(title, xlabel, "val top-1 (%)",
                    {label: ([pt["lat"] for pt in pts], [pt[key] for pt in pts])
                     for label, pts in ((args.label_a, a), (args.label_b, b))})
                   for key, title in (("pruned", "right after pruning"), ("short", "after the short finetune"))],
                  args.out / "curves.png")
    bc.log(f"written {args.out}/results.md")


if __name__ == "__main__":
    main()
