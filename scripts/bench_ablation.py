"""The paper's ablation (MDP, CVPR 2025, Fig. 4) in accuracy: what the multi-dimensional latency model and block
removal each bring, on one model, at the same budgets, with the same finetune and seeds.

    OMP_NUM_THREADS=1 nice -n 19 python scripts/bench_ablation.py --model resnet18 --budgets 0.3,0.5 --seeds 5 \\
        --train-subset 20000 --val-subset 2000 --epochs 4 --ft-short 1

Variants (the solver's own options, ``mdp_cli/solve``: ``latency_model`` linear = ``solve/linear.py``, ``blocks``):

- ``channels+linear``        channel widths only, linear (per-dim, HALP-like) latency model
- ``channels+blocks+linear`` channel widths and whole-block removal, linear latency model
- ``channels+multidim``      channel widths only, multi-dimensional latency table
- ``mdp``                    widths and blocks, multi-dimensional table (the full method)

Each variant is solved at the budget, exported, measured in turns with the dense model (one thread, this
process) and finetuned with the same recipe for every seed; each is compared with ``mdp`` over the seeds (paired).
The linear model misjudges latency, so solved at the budget itself a linear variant lands elsewhere on the
measured tables (above or below the budget); by default its budget is calibrated (bisected) until its solution
meets the budget on the measured tables (``--no-calibrate-linear``: solved at the budget). Every variant's
latency measured in turns with dense is reported, and the plot puts each at that measured latency.

Output: --out (docs/bench/ablation/): results.json, results.md, acc_vs_latency_*.png. Shares the dense model and
LUT cache with bench_vs_torch_pruning.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

VARIANTS = {
    "channels+linear": {"latency_model": "linear", "blocks": False},
    "channels+blocks+linear": {"latency_model": "linear", "blocks": True},
    "channels+multidim": {"latency_model": "multidim", "blocks": False},
    "mdp": {"latency_model": "multidim", "blocks": True},
}


def run_cell(args, prepared, budget: float, dense, config) -> dict:
    cfg, discovered, problem, run_dir = prepared
    data = bc.data_spec(args.train_subset, args.val_subset)
    cell: dict = {"model": args.model, "batch": args.batch, "budget": budget}
    for name in args.variants:
        from mdp_cli.errors import MdpError

        solve_budget = budget
        try:
            if VARIANTS[name]["latency_model"] == "linear" and args.calibrate_linear:
                solve_budget = calibrated_budget(problem, budget, **VARIANTS[name])
            module, solution = bc.mdp_prune(cfg, discovered, problem, run_dir, solve_budget,
                                            name=f"ablation-{name}{args.floor_tag}", min_keep=args.min_keep,
                                            **VARIANTS[name])
        except MdpError as exc:  # e.g. channels alone cannot reach the budget: a result, not a crash
            cell[name] = {"infeasible": str(exc)}
            bc.log(f"{args.model} budget {budget} {name}: {exc}")
            continue
        lat = bc.ratio_in_turns(module, dense, args.batch, args.resolution, args.repeats)
        true_ratio = solution.latency_ratio  # under the measured tables, also for the linear variants
        row = {"predicted_fraction": true_ratio, "solved_at_budget": solve_budget, "latency_fraction": lat["ratio"], "ms": lat["ms"],
               "blocks_removed": sorted(b for b, k in solution.kept.items() if not k),
               "choice": dict(solution.choice),
               "importance_kept": solution.objective / solution.dense_objective if solution.dense_objective else None,
               "top1_pruned": bc.top1(module, data, config, args.val_subset), "top1_short": []}
        for seed in range(args.seeds):
            cfg_ft = bc.recipe(args.ft_short, seed, lr=args.ft_lr, train_subset=args.train_subset,
                               val_subset=args.val_subset)
            row["top1_short"].append(bc.finetuned_top1(module, data, cfg_ft, config))
        bc.log(f"{args.model} budget {budget} {name}: tables {true_ratio:.3f}, measured {lat['ratio']:.3f} of dense, "
               f"blocks removed {len(row['blocks_removed'])}, pruned {row['top1_pruned']:.2f}, "
               f"short ft {bc.pm(row['top1_short'])}")
        cell[name] = row
    for name in args.variants:
        if name != "mdp" and "top1_short" in cell.get("mdp", {}) and "top1_short" in cell[name]:
            cell[name]["stats_vs_mdp"] = bc.paired_stats(cell["mdp"]["top1_short"], cell[name]["top1_short"])
    return cell


def calibrated_budget(problem, budget: float, latency_model: str, blocks: bool, steps: int = 14) -> float:
    """The largest budget handed to a linear-latency variant whose solution still meets ``budget`` under the
    measured (multi-dimensional) tables. The linear model misjudges a configuration's latency (it ignores how
    a layer's input and output widths interact), so solved at the budget itself it lands elsewhere on the true
    tables; calibrated, every variant is compared at the same true latency, which is what the ablation asks."""
    from mdp_cli.errors import MdpError
    from mdp_cli.solve import solve_problem

    def fits(b: float) -> bool:
        try:
            sol = solve_problem(problem, budget=b, latency_model=latency_model, blocks=blocks,
                                formulation="monolithic")
        except MdpError:  # below the smallest reachable latency of the linear model
            return False
        return sol.latency_ratio <= budget * (1 + 1e-9)

    if fits(budget):
        lo, hi = budget, 1.0  # the linear model overestimates here: give it more room, up to dense
        if fits(hi - 1e-6):
            return hi - 1e-6
    else:
        lo, hi = 1e-3, budget
        if not fits(lo):
            raise MdpError(f"{latency_model} latency model, blocks={blocks}: no budget given to it yields a "
                           f"configuration within {budget:g} of dense on the measured tables")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def remeasure(cells: list[dict], args, run_dir: Path, dense) -> None:
    """Every variant's export measured again in turns with dense, with ``args.remeasure`` samples."""
    from mdp_cli.export.spec import load_exported

    for c in cells:
        if c.get("remeasured_samples") == args.remeasure:
            continue
        for name in args.variants:
            r = c.get(name, {})
            if "top1_short" not in r:
                continue
            module = load_exported(run_dir / f"ablation-{name}{args.floor_tag}_{r['solved_at_budget']:g}" / "exported")
            r["latency_fraction_remeasured"] = bc.ratio_in_turns(module, dense, args.batch, args.resolution,
                                                                 args.remeasure)["ratio"]
            bc.log(f"remeasured {c['budget']} {name}: {r['latency_fraction_remeasured']:.3f} of dense")
        c["remeasured_samples"] = args.remeasure


def report(cells: list[dict], args) -> None:
    out = args.out
    bc.write_json(out / "results.json", {"settings": vars(args) | {"out": str(args.out), "cache": str(args.cache)},
                                         "cells": cells})
    rows = []
    for c in cells:
        for name in args.variants:
            r = c[name]
            if "infeasible" in r:
                rows.append({"budget": c["budget"], "variant": name, "verdict": "cannot reach: " + r["infeasible"]})
                continue
            st = r.get("stats_vs_mdp")
            rows.append({"budget": c["budget"], "variant": name, "solved_at": r.get("solved_at_budget"),
                         "pred": r["predicted_fraction"],
                         "lat": r.get("latency_fraction_remeasured", r["latency_fraction"]),
                         "blocks": len(r["blocks_removed"]),
                         "imp": r["importance_kept"], "pruned": r["top1_pruned"], "short": bc.pm(r["top1_short"]),
                         "diff": st["mean_diff"] if st else None, "p_t": st["p_t"] if st else None,
                         "p": st["p_sign_flip"] if st else None,
                         "won": f"{st['a_wins']}/{st['n']}" if st else "",
                         "verdict": ("mdp " + bc.verdict(st)) if st else ""})
    lines = [f"# Ablation (paper Fig. 4) in accuracy: {args.model}, batch {args.batch}, {args.resolution} px", "",
             f"Command: `python scripts/bench_ablation.py {' '.join(sys.argv[1:])}`", "",
             f"builtin:fashion-mnist train subset {args.train_subset}, val subset {args.val_subset}; dense trained "
             f"{args.epochs} epochs; mdp space prune_stem {str(args.prune_stem).lower()}, score.objective "
             f"{args.objective}, score.criterion {args.criterion}, score.normalize {args.normalize}, score.coupled "
             f"{args.coupled}, solve.min_keep {args.min_keep}; finetune SGD lr {args.ft_lr}, cosine, {args.ft_short} epoch(s); {args.seeds} "
             "finetune seeds, paired against full mdp (paired t-test; the sign-flip test beside it cannot go below 2/2^n). Measured latency: in turns with dense, one "
             "thread, median of " + (f"{cells[0]['remeasured_samples']} samples (re-measured after the run)"
                                      if cells and cells[0].get("remeasured_samples") else f"{args.repeats} samples")
             + "; 'tables': the solution's latency on the measured LUT (what the solver sees).", "",
             bc.markdown_table(rows, [("budget", "budget"), ("variant", "variant"), ("solved_at", "solved at"),
                                      ("pred", "tables lat/dense"),
                                      ("lat", "measured lat/dense"), ("blocks", "blocks removed"),
                                      ("imp", "importance kept"), ("pruned", "top-1 pruned"),
                                      ("short", "top-1 short ft"), ("diff", "mdp − variant"),
                                      ("won", "seeds mdp ahead"), ("p_t", "p (paired t)"),
                                      ("p", "p (sign-flip)"), ("verdict", "verdict")])]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    series = {name: [(c[name].get("latency_fraction_remeasured", c[name]["latency_fraction"]), c[name]["top1_short"]) for c in cells if "top1_short" in c[name]]
              for name in args.variants}
    bc.plot_accuracy_vs_latency(series, out / f"acc_vs_latency_{args.model}_b{args.batch}.png",
                                f"ablation, {args.model}, batch {args.batch}, short finetune, mean ± sd over seeds")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--budgets", default="0.2,0.3,0.5,0.7")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4, help="dense training epochs")
    p.add_argument("--ft-short", type=int, default=1)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--remeasure", type=int, default=0,
                   help="after the cells: measure every variant again in turns with dense with this many samples")
    p.add_argument("--prune-stem", dest="prune_stem", action="store_true", default=None,
                   help="let the space prune the stem's channels (CNN space option prune_stem; default: the "
                        "family's)")
    p.add_argument("--keep-stem", dest="prune_stem", action="store_false", help="keep the stem's channels")
    p.add_argument("--coupled", choices=("sum", "mean", "sqrt"),
                   help="score.coupled: how a residual (shared) dim combines its layers' scores (default: the "
                        "model family's)")
    bc.add_score_flags(p)
    p.add_argument("--min-keep", type=float,
                   help="solve.min_keep: every dim keeps at least this fraction of its width (default: no floor)")
    p.add_argument("--no-calibrate-linear", dest="calibrate_linear", action="store_false",
                   help="solve the linear variants at the budget itself (they may then miss it on the true tables)")
    p.add_argument("--out", type=Path, default=bc.ROOT / "docs" / "bench" / "ablation")
    p.add_argument("--cache", type=Path, default=bc.ROOT / "runs" / "bench_cache")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS):
        sys.exit(f"--variants: unknown {sorted(set(args.variants) - set(VARIANTS))} (known: {', '.join(VARIANTS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    from mdp_cli.data import data_config
    from mdp_cli.train.engine import load_model

    weights = bc.train_dense(args.model, bc.data_spec(args.train_subset, args.val_subset), args.resolution, args.epochs,
                             args.cache)
    dense = load_model(args.model, str(weights), 10, img_size=args.resolution).module.eval()
    config = data_config(dense, args.resolution)
    cfg = bc.mdp_config(args.model, weights, args.resolution, args.batch, bc.data_spec(args.train_subset, None),
                        args.cache, args.repeats,
                        space=None if args.prune_stem is None else {"prune_stem": args.prune_stem},
                        coupled=args.coupled,
                        score=bc.score_flags(args))
    # resolved: the family's defaults where not given
    args.coupled, args.prune_stem = cfg["score"]["coupled"], bool(cfg["space"].get("prune_stem"))
    args.objective, args.criterion = cfg["score"]["objective"], cfg["score"]["criterion"]
    args.normalize = cfg["score"]["normalize"]
    # the cache names of summed importance (the only mode before --coupled) stay as they were
    stem = bc.mdp_run_suffix(cfg)
    args.floor_tag = f"_mk{args.min_keep:g}" if args.min_keep else ""
    run_dir = args.cache / "mdp" / f"{args.model}_{args.resolution}px_b{args.batch}{stem}"
    discovered, problem = bc.prepare_mdp(cfg, run_dir)
    cells, keys = [], []
    for budget in args.budgets:
        key = (f"ablation{'-cal' if args.calibrate_linear else ''}{stem}{args.floor_tag}_{args.model}_{args.resolution}px_b{args.batch}_{budget:g}_s{args.seeds}_e{args.ft_short}_"
               f"{args.train_subset}_{args.val_subset}_{'+'.join(args.variants)}")
        cell = bc.cached(args.cache / "cells" / f"{key}.json",
                         lambda: run_cell(args, (cfg, discovered, problem, run_dir), budget, dense, config))
        cells.append(cell)
        report(cells, args)
        keys.append(key)
    if args.remeasure:
        remeasure(cells, args, run_dir, dense)
        for key, cell in zip(keys, cells):
            bc.write_json(args.cache / "cells" / f"{key}.json", cell)
        report(cells, args)
    bc.log(f"written {args.out}/results.md")


if __name__ == "__main__":
    main()
