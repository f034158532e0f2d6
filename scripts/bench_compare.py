"""Paired comparison of mdp settings, each benchmarked by ``bench_ablation.py --variants mdp`` into its own output
directory, against one of them (``--ref``) and against a Torch-Pruning setting recorded by
``bench_vs_torch_pruning.py`` (``--tp``):

    python scripts/bench_compare.py --ref docs/bench/coupled/sum docs/bench/coupled/*/ \\
        --tp docs/bench/vs_torch_pruning/results.json --out docs/bench/coupled

Every run finetunes with the same seeds (0..n-1), so the differences are paired by seed. Torch-Pruning's
recorded numbers pair with them only when its dense model is the one these runs trained: the same dense
settings (deterministic CPU training, seed 0); the script refuses other settings. Output: results.md (accuracy
table and the kept width of every dim) and results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

DENSE_KEYS = ("train_subset", "val_subset", "epochs", "resolution", "seeds", "ft_short", "ft_lr")


def load_run(path: Path) -> dict:
    data = json.loads((path / "results.json").read_text())
    s = data["settings"]
    label = (f"{'stem' if s.get('prune_stem') else 'keep stem'}, {s.get('coupled') or 'sum'}"
             + "".join(f", {s[k]}" for k, default in (("objective", "labels"), ("criterion", "taylor"))
                       if s.get(k) not in (None, default))
             + (f", normalize {s['normalize']}" if s.get("normalize") not in (None, "none") else "")
             + (f", min_keep {s['min_keep']:g}" if s.get("min_keep") else ""))
    cells = {c["budget"]: c["mdp"] for c in data["cells"] if "top1_short" in c.get("mdp", {})}
    return {"dir": str(path), "label": label, "settings": s, "cells": cells}


def load_tp(path: Path, setting: str, runs: list[dict]) -> dict:
    data = json.loads(path.read_text())
    s = data["settings"]
    for run in runs:
        differ = [k for k in DENSE_KEYS if run["settings"].get(k) != s.get(k)]
        if differ:
            sys.exit(f"--tp {path}: recorded with other settings than {run['dir']} ({', '.join(differ)}); "
                     "its seeds do not pair with these runs")
    return {c["budget"]: c[setting] for c in data["cells"] if setting in c and "top1_short" in c[setting]}


def compare(runs: list[dict], ref: dict, tp: dict) -> list[dict]:
    rows = []
    for budget in sorted({b for r in runs for b in r["cells"]}):
        for run in runs:
            r = run["cells"].get(budget)
            if r is None:
                continue
            row = {"budget": budget, "setting": run["label"], "pred": r["predicted_fraction"],
                   "lat": r.get("latency_fraction_remeasured", r["latency_fraction"]),
                   "blocks": len(r["blocks_removed"]), "pruned": r["top1_pruned"], "short": bc.pm(r["top1_short"]),
                   "mean": bc.mean_sd(r["top1_short"])[0], "seeds": r["top1_short"]}
            base = ref["cells"].get(budget)
            if base is not None and run is not ref:
                st = bc.paired_stats(r["top1_short"], base["top1_short"])
                row.update({"d_ref": st["mean_diff"], "won_ref": f"{st['a_wins']}/{st['n']}", "p_ref": st["p_t"],
                            "ps_ref": st["p_sign_flip"], "stats_vs_ref": st})
            if budget in tp:
                st = bc.paired_stats(r["top1_short"], tp[budget]["top1_short"])
                row.update({"d_tp": st["mean_diff"], "won_tp": f"{st['a_wins']}/{st['n']}", "p_tp": st["p_t"],
                            "ps_tp": st["p_sign_flip"], "stats_vs_tp": st})
            row["choice"] = r.get("choice", {})
            rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="output directories of bench_ablation.py --variants mdp")
    p.add_argument("--ref", type=Path, required=True, help="the run the others are paired against")
    p.add_argument("--tp", type=Path, help="results.json of bench_vs_torch_pruning.py")
    p.add_argument("--tp-setting", default="taylor-global")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    paths = list(dict.fromkeys(Path(str(r).rstrip("/")) for r in [args.ref, *args.runs]))
    runs = [load_run(r) for r in paths]
    ref = runs[0]
    tp = load_tp(args.tp, args.tp_setting, runs) if args.tp else {}
    rows = compare(runs, ref, tp)
    args.out.mkdir(parents=True, exist_ok=True)
    bc.write_json(args.out / "results.json", {"ref": ref["dir"], "tp": str(args.tp) if args.tp else None,
                                              "tp_setting": args.tp_setting,
                                              "tp_top1_short": {str(b): c["top1_short"] for b, c in tp.items()},
                                              "rows": rows})
    s = ref["settings"]
    columns = [("budget", "budget"), ("setting", "mdp setting (stem, coupled, objective, criterion, normalize, floor)"), ("pred", "tables lat/dense"),
               ("lat", "measured lat/dense"), ("blocks", "blocks removed"), ("pruned", "top-1 pruned"),
               ("short", "top-1 short ft"), ("d_ref", f"− {ref['label']}"), ("won_ref", "seeds ahead"),
               ("p_ref", "p (paired t)"), ("ps_ref", "p (sign-flip)")]
    if tp:
        columns += [("d_tp", f"− TP {args.tp_setting}"), ("won_tp", "seeds ahead of TP"), ("p_tp", "p (paired t)"),
                    ("ps_tp", "p (sign-flip)")]
    dims = list(dict.fromkeys(d for row in rows for d in row["choice"]))
    widths = [{"budget": row["budget"], "setting": row["setting"], **row["choice"]} for row in rows]
    tp_line = (f"Torch-Pruning {args.tp_setting} (recorded, {args.tp}): "
               + "; ".join(f"{b:g}: {bc.pm(c['top1_short'])}" for b, c in sorted(tp.items())) + ".") if tp else ""
    lines = [f"# mdp settings compared: {s['model']}, batch {s['batch']}, {s['resolution']} px", "",
             f"Command: `python scripts/bench_compare.py {' '.join(sys.argv[1:])}`", "",
             f"Runs: {', '.join(r['dir'] for r in runs)} (each `bench_ablation.py --variants mdp`; its results.md "
             f"has the command). Train subset {s['train_subset']}, val subset {s['val_subset']}, dense "
             f"{s['epochs']} epochs, {s['seeds']} finetune seeds of {s['ft_short']} epoch(s), paired by seed. "
             + tp_line, "",
             bc.markdown_table(rows, columns), "",
             "Kept width of every dim:", "",
             bc.markdown_table(widths, [("budget", "budget"), ("setting", "setting")] + [(d, d) for d in dims])]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    bc.log(f"written {args.out}/results.md")


if __name__ == "__main__":
    main()
