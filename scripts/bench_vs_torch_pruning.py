"""mdp against Torch-Pruning at equal measured latency, in accuracy, over finetune seeds.

    pip install -e '.[bench]'        # Torch-Pruning from PyPI (never vendored)
    OMP_NUM_THREADS=1 nice -n 19 python scripts/bench_vs_torch_pruning.py --models resnet18 --budgets 0.3,0.5 \\
        --batches 1 --seeds 5 --train-subset 20000 --val-subset 2000 --epochs 4 --ft-short 1 --ft-long 3

For each model (trained here from scratch on builtin:fashion-mnist at --resolution px, cached), served batch
(the LUT is profiled at that batch and every latency is measured at it) and budget:

1. mdp prunes through its library (profile -> score -> problem -> solve -> export);
2. Torch-Pruning prunes the same dense model with each setting (magnitude / Taylor importance, local / global
   ranking), its pruning ratio bisected until the pruned model's latency, measured in turns with mdp's model in
   this process on one thread, is within --match (2 %) of mdp's;
3. accuracy right after pruning; the Torch-Pruning setting with the best seed-0 short finetune is the one
   compared over all seeds (chosen on the validation split: an advantage given to the baseline);
4. the same finetune recipe (short and long) for both, per seed; paired statistics over the seeds.

Optionally (--fidelity) the built-in EfficientNet-Lite0 with real ImageNet weights is pruned by both at equal
measured latency, without finetuning, and compared with the dense model on scikit-image's real photos
(top-1 agreement and KL divergence).

Output: --out (docs/bench/vs_torch_pruning/): results.json, results.md, acc_vs_latency_*.png. Work is cached
under --cache, so an interrupted run resumes and a rerun only rewrites the report.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

TP_SETTINGS = ("magnitude-local", "magnitude-global", "taylor-local", "taylor-global")


def require_torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        sys.exit("this benchmark needs Torch-Pruning: pip install -e '.[bench]' (or pip install torch-pruning==1.6.1)")
    return torch_pruning


# ------------------------------------------------------------------------------------------------ Torch-Pruning

def tp_prune(dense, setting: str, ratio: float, resolution: int, taylor_batches, round_to: int | None = 8):
    """A copy of ``dense`` pruned by Torch-Pruning at channel ratio ``ratio`` with ``setting``."""
    import torch
    import torch.nn.functional as F

    tp = require_torch_pruning()
    model = copy.deepcopy(dense).eval()
    criterion, scope = setting.split("-")
    importance = tp.importance.TaylorImportance() if criterion == "taylor" else tp.importance.MagnitudeImportance(p=2)
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    options: dict[str, Any] = {}
    attentions = []
    try:
        from timm.models.vision_transformer import Attention

        attentions = [m for m in model.modules() if isinstance(m, Attention)]
    except ImportError:
        pass
    if attentions:  # ViT: qkv projections are split per head; head dims pruned, the number of heads kept
        options = {"num_heads": {m.qkv: m.num_heads for m in attentions}, "prune_head_dims": True,
                   "prune_num_heads": False}
    example = torch.randn(1, 3, resolution, resolution)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                  global_pruning=scope == "global", ignored_layers=[head], round_to=round_to,
                                  max_pruning_ratio=0.95, **options)
    if criterion == "taylor":
        model.zero_grad()
        for images, targets in taylor_batches:
            F.cross_entropy(model(images), targets).backward()
    pruner.step()
    for m in attentions:
        m.num_heads = pruner.num_heads.get(m.qkv, m.num_heads) if hasattr(pruner, "num_heads") else m.num_heads
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim
    model.zero_grad(set_to_none=True)
    return model.eval()


def match_latency(dense, target, setting: str, batch: int, resolution: int, taylor_batches, match: float,
                  max_steps: int = 12, repeats: int = 30) -> dict[str, Any]:
    """Bisect Torch-Pruning's ratio until its model's latency, timed in turns with ``target``, is within
    ``match`` of it. Returns the closest model found (its ratio and measured latency ratio)."""
    lo, hi = 0.0, 0.95
    best: dict[str, Any] | None = None
    for step in range(max_steps):
        ratio = (lo + hi) / 2
        model = tp_prune(dense, setting, ratio, resolution, taylor_batches)
        timing = bc.ratio_in_turns(model, target, batch, resolution, repeats)
        if best is None or abs(timing["ratio"] - 1) < abs(best["latency_vs_mdp"] - 1):
            best = {"model": model, "ratio": ratio, "latency_vs_mdp": timing["ratio"], "steps": step + 1}
        bc.log(f"  {setting}: ratio {ratio:.4f} -> {timing['ratio']:.3f} x mdp's latency")
        if abs(timing["ratio"] - 1) <= match:
            break
        if timing["ratio"] > 1:
            lo = ratio
        else:
            hi = ratio
    return best


def scoring_batches(data: str, config, batches: int = 8, batch_size: int = 32):
    """Labelled training batches for Taylor importance (the same count and size mdp scores on)."""
    from mdp_cli.data import make_loader

    loader = make_loader(data, "train", config=dict(config), batch_size=batch_size, train=True, augment=False, seed=0)
    out = []
    for images, targets in loader:
        out.append((images, targets))
        if len(out) == batches:
            break
    return out


# ------------------------------------------------------------------------------------------------ one cell

def run_cell(args, model_name: str, weights: Path, batch: int, budget: float, prepared, dense, config) -> dict:
    """mdp vs every Torch-Pruning setting at one (model, batch, budget): latencies, accuracies, statistics."""
    cfg, discovered, problem, run_dir = prepared
    data = bc.data_spec(args.train_subset, args.val_subset)
    floor = f"_mk{args.min_keep:g}" if args.min_keep else ""
    mdp_model, solution = bc.mdp_prune(cfg, discovered, problem, run_dir, budget, name=f"mdp{floor}",
                                       min_keep=args.min_keep)
    mdp_lat = bc.ratio_in_turns(mdp_model, dense, batch, args.resolution, args.repeats)
    bc.log(f"{model_name} b{batch} budget {budget}: mdp predicted {solution.latency_ratio:.3f}, measured "
           f"{mdp_lat['ratio']:.3f} of dense; blocks removed {sum(not k for k in solution.kept.values())}")
    taylor = scoring_batches(bc.data_spec(args.train_subset, None), config)
    models = {"mdp": mdp_model}
    cell: dict[str, Any] = {"model": model_name, "batch": batch, "budget": budget,
                            "mdp": {"predicted_fraction": solution.latency_ratio,
                                    "blocks_removed": sorted(b for b, k in solution.kept.items() if not k),
                                    "choice": solution.choice}}
    for setting in args.tp_settings:
        found = match_latency(dense, mdp_model, setting, batch, args.resolution, taylor, args.match,
                              repeats=args.repeats)
        models[setting] = found.pop("model")
        cell[setting] = found
    # the match, once more with twice the samples: each Torch-Pruning model in turns with mdp's
    for setting in args.tp_settings:
        cell[setting]["latency_vs_mdp_final"] = bc.ratio_in_turns(models[setting], mdp_model, batch, args.resolution,
                                                                  2 * args.repeats)["ratio"]
    # every model against dense, in turns: the latencies reported
    for name, module in models.items():
        lat = bc.ratio_in_turns(module, dense, batch, args.resolution, args.repeats)
        cell.setdefault(name, {}).update({"latency_fraction": lat["ratio"], "ms": lat["ms"], "dense_ms": lat["ref_ms"],
                                          "params": sum(p.numel() for p in module.parameters())})
        cell[name]["top1_pruned"] = bc.top1(module, data, config, args.val_subset)
        bc.log(f"  {name}: {lat['ratio']:.3f} of dense ({lat['ms']:.3f} ms), top1 right after pruning "
               f"{cell[name]['top1_pruned']:.2f}")

    def ft(module, epochs, seed):
        cfg_ft = bc.recipe(epochs, seed, lr=args.ft_lr, train_subset=args.train_subset, val_subset=args.val_subset)
        return bc.finetuned_top1(module, data, cfg_ft, config)

    seeds = list(range(args.seeds))
    # the baseline's setting: the best seed-0 short finetune among Torch-Pruning's settings whose model matched
    # mdp's latency (a slower model is no baseline at this budget); where none could, the closest in latency,
    # and the cell says so
    for setting in args.tp_settings:
        cell[setting]["top1_short_seed0"] = ft(models[setting], args.ft_short, seeds[0])
        bc.log(f"  {setting}: seed-0 short finetune {cell[setting]['top1_short_seed0']:.2f}")

    def off(setting: str) -> float:
        return abs(cell[setting]["latency_vs_mdp_final"] - 1)

    matched = [s for s in args.tp_settings if off(s) <= args.select_tolerance]
    best_tp = max(matched, key=lambda s: cell[s]["top1_short_seed0"]) if matched else min(args.tp_settings, key=off)
    cell["tp_best"], cell["tp_matched"] = best_tp, bool(matched)
    for name in ("mdp", best_tp):
        short, long = [], []
        for seed in seeds:
            reuse = name == best_tp and seed == seeds[0]  # deterministic on CPU: the same run as the selection's
            short.append(cell[name]["top1_short_seed0"] if reuse else ft(models[name], args.ft_short, seed))
            long.append(ft(models[name], args.ft_long, seed) if args.ft_long else float("nan"))
            bc.log(f"  {name} seed {seed}: short {short[-1]:.2f}, long {long[-1]:.2f}")
        cell[name]["top1_short"], cell[name]["top1_long"] = short, long
    cell["stats_short"] = bc.paired_stats(cell["mdp"]["top1_short"], cell[best_tp]["top1_short"])
    if args.ft_long:
        cell["stats_long"] = bc.paired_stats(cell["mdp"]["top1_long"], cell[best_tp]["top1_long"])
    return cell


def remeasure(cells: list[dict], args, dense, config, weights_for: dict) -> None:
    """Measure every cell's mdp and best Torch-Pruning model again, in turns with dense and with each other, with
    ``args.remeasure`` samples each (a shared machine's noise at 30 samples reached 10-20 %). The models are
    rebuilt: mdp's export from disk, Torch-Pruning's by re-pruning at the recorded ratio (deterministic)."""
    from mdp_cli.export.spec import load_exported

    for c in cells:
        if c.get("remeasured_samples") == args.remeasure or c["model"] not in weights_for:
            continue
        run_dir = args.cache / "mdp" / f"{c['model']}_{args.resolution}px_b{c['batch']}{c.get('mdp_suffix', '')}"
        mdp_model = load_exported(run_dir / f"mdp{c.get('mdp_floor', '')}_{c['budget']:g}" / "exported")
        tp = c["tp_best"]
        taylor = scoring_batches(bc.data_spec(args.train_subset, None), config)
        tp_model = tp_prune(dense, tp, c[tp]["ratio"], args.resolution, taylor)
        for name, module in (("mdp", mdp_model), (tp, tp_model)):
            lat = bc.ratio_in_turns(module, dense, c["batch"], args.resolution, args.remeasure)
            c[name]["latency_fraction_remeasured"] = lat["ratio"]
        c[tp]["latency_vs_mdp_remeasured"] = bc.ratio_in_turns(tp_model, mdp_model, c["batch"], args.resolution,
                                                               args.remeasure)["ratio"]
        c["remeasured_samples"] = args.remeasure
        bc.log(f"remeasured {c['model']} b{c['batch']} {c['budget']}: mdp {c['mdp']['latency_fraction_remeasured']:.3f}, "
               f"{tp} {c[tp]['latency_fraction_remeasured']:.3f} of dense; {tp}/mdp {c[tp]['latency_vs_mdp_remeasured']:.3f}")


# ------------------------------------------------------------------------------------------------ fidelity

def fidelity(args, cache: Path) -> dict:
    """EfficientNet-Lite0 (real ImageNet weights) pruned by mdp and by Torch-Pruning at equal measured latency:
    agreement with the dense model's top-1 and KL(dense || pruned) on real photos, no finetuning."""
    import torch
    import torch.nn.functional as F

    model = "tf_efficientnet_lite0"
    res = args.fidelity_resolution
    from mdp_cli.config import load_config

    cfg = load_config(None, {"model": model, "resolution": res, "pretrained": "builtin:efficientnet-lite0",
                             "profile": {"batch": 1, "threads": 1, "repeats": args.repeats,
                                         "lut_dir": str(cache / "luts")},
                             "score": {"data": "builtin:fashion-mnist?train=512", "batches": 4, "batch_size": 16,
                                       "seed": 0, "objective": "pseudo_labels", "coupled": args.coupled},
                             "export": {"tolerance": 10.0, "measure": True, "repeats": args.repeats},
                             "space": {"prune_stem": args.prune_stem}})
    run_dir = cache / f"fidelity_{model}_{res}{bc.mdp_run_suffix(cfg)}"
    discovered, problem = bc.prepare_mdp(cfg, run_dir)
    dense = copy.deepcopy(discovered.model).eval()
    photos = bc.real_photos(dense)
    with torch.no_grad():
        dense_logits = dense(photos)
    # Taylor on the dense model's own predictions for the photos' neighbours is not available without labels:
    # Torch-Pruning gets its magnitude settings here (its Taylor needs labelled data), mdp scores with
    # pseudo-labels on Fashion-MNIST (out of domain for both).
    rows = []
    for budget in args.fidelity_budgets:
        mdp_model, solution = bc.mdp_prune(cfg, discovered, problem, run_dir, budget)
        models = {"mdp": mdp_model}
        for setting in ("magnitude-local", "magnitude-global"):
            models[setting] = match_latency(dense, mdp_model, setting, 1, res, [], args.match,
                                            repeats=args.repeats)["model"]
        for name, module in models.items():
            lat = bc.ratio_in_turns(module, dense, 1, res, args.repeats)
            with torch.no_grad():
                logits = module.eval()(photos)
            agree = (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item() * 100
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(dense_logits, -1), log_target=True,
                          reduction="batchmean").item()
            rows.append({"budget": budget, "method": name, "latency_fraction": lat["ratio"], "top1_agreement": agree,
                         "kl": kl, "images": len(photos)})
            bc.log(f"fidelity {budget}: {name} {lat['ratio']:.3f} of dense, agreement {agree:.1f} %, KL {kl:.3f}")
    return {"model": model, "resolution": res, "rows": rows}


# ------------------------------------------------------------------------------------------------ report

def report_fidelity(fid: dict, out: Path) -> None:
    bc.write_json(out / "fidelity.json", fid)
    lines = [f"# Fidelity to the dense {fid['model']} (real ImageNet weights, builtin:efficientnet-lite0)", "",
             f"Command: `python scripts/bench_vs_torch_pruning.py {' '.join(sys.argv[1:])}`", "",
             f"{fid['resolution']} px, batch 1, one thread; {fid['rows'][0]['images'] if fid['rows'] else 0} real photos "
             "(scikit-image's bundled photographs, each also flipped); no finetuning. mdp scored with pseudo-labels "
             "(the dense model's own predictions) on 64 Fashion-MNIST images (out of domain; no ImageNet here); "
             "Torch-Pruning with its data-free magnitude settings, its ratio bisected to mdp's measured latency. "
             "KL = KL(dense || pruned) of the softmax outputs, mean over the photos.", "",
             bc.markdown_table(fid["rows"], [("budget", "budget"), ("method", "method"),
                                              ("latency_fraction", "lat/dense"),
                                              ("top1_agreement", "top-1 agreement %"), ("kl", "KL")])]
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")


def report(cells: list[dict], args, out: Path) -> None:
    bc.write_json(out / "results.json", {"settings": vars(args) | {"out": str(args.out), "cache": str(args.cache)},
                                         "cells": cells})
    lines = ["# mdp vs Torch-Pruning at equal measured latency", "",
             f"Command: `python scripts/bench_vs_torch_pruning.py {' '.join(sys.argv[1:])}`", "",
             f"Data: builtin:fashion-mnist, train subset {args.train_subset}, val subset {args.val_subset}, "
             f"{args.resolution} px; dense trained {args.epochs} epochs; finetune: SGD lr {args.ft_lr}, cosine, "
             f"short {args.ft_short} / long {args.ft_long} epochs; {args.seeds} finetune seeds (paired).", ""]
    rows = []
    for c in cells:
        tp = c["tp_best"]
        for stage in ("pruned", "short", "long"):
            if stage == "pruned":
                a, b, st = [c["mdp"]["top1_pruned"]], [c[tp]["top1_pruned"]], None
            else:
                a, b, st = c["mdp"][f"top1_{stage}"], c[tp][f"top1_{stage}"], c.get(f"stats_{stage}")
                if st is None:
                    continue
            rows.append({"model": c["model"], "batch": c["batch"], "budget": c["budget"], "stage": stage,
                         "mdp_lat": c["mdp"].get("latency_fraction_remeasured", c["mdp"]["latency_fraction"]),
                         "tp": tp, "tp_lat": c[tp].get("latency_fraction_remeasured", c[tp]["latency_fraction"]),
                         "tp_vs_mdp": c[tp].get("latency_vs_mdp_remeasured", c[tp].get("latency_vs_mdp_final")),
                         "mdp_acc": bc.pm(a), "tp_acc": bc.pm(b), "diff": st["mean_diff"] if st else a[0] - b[0],
                         "p_sign_flip": st["p_sign_flip"] if st else None, "p_t": st["p_t"] if st else None,
                         "seeds_won": f"{st['a_wins']}/{st['n']}" if st else "",
                         "verdict": ((bc.verdict(st) if st else "(1 model)") if c.get("tp_matched", True) else
                                     f"TP cannot reach mdp's latency: its closest is {c[tp].get('latency_vs_mdp_final', float('nan')):.2f}x")})
    lines.append(bc.markdown_table(rows, [("model", "model"), ("batch", "batch"), ("budget", "budget"),
                                          ("stage", "accuracy"), ("mdp_lat", "mdp lat/dense"),
                                          ("tp", "TP setting"), ("tp_lat", "TP lat/dense"),
                                          ("tp_vs_mdp", "TP lat/mdp lat"), ("mdp_acc", "mdp top-1"),
                                          ("tp_acc", "TP top-1"), ("diff", "mdp − TP"),
                                          ("seeds_won", "seeds mdp ahead"), ("p_t", "p (paired t)"),
                                          ("p_sign_flip", "p (sign-flip)"), ("verdict", "verdict")]))
    lines += ["", "Latencies: measured in turns with the dense model (one thread, this process), median of "
              + (f"{cells[0].get('remeasured_samples')} samples (re-measured after the run)"
                 if cells and cells[0].get("remeasured_samples") else f"{args.repeats} samples") + "; "
              "'TP lat/mdp lat': the two pruned models timed in turns with each other.", "",
              "Every Torch-Pruning setting right after pruning and after the seed-0 short finetune:", ""]
    trows = []
    for c in cells:
        for s in ["mdp"] + list(args.tp_settings):
            trows.append({"model": c["model"], "batch": c["batch"], "budget": c["budget"], "method": s,
                          "lat": c[s]["latency_fraction"], "vs_mdp": c[s].get("latency_vs_mdp_final"),
                          "ratio": c[s].get("ratio"),
                          "params": c[s]["params"] / 1e6, "pruned": c[s]["top1_pruned"],
                          "short0": c[s].get("top1_short_seed0", (c[s].get("top1_short") or [None])[0])})
    lines.append(bc.markdown_table(trows, [("model", "model"), ("batch", "batch"), ("budget", "budget"),
                                           ("method", "method"), ("lat", "lat/dense"), ("vs_mdp", "lat/mdp lat"),
                                           ("ratio", "TP ratio"),
                                           ("params", "params (M)"), ("pruned", "top-1 pruned"),
                                           ("short0", "top-1 short ft, seed 0")]))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    for model in sorted({c["model"] for c in cells}):
        for batch in sorted({c["batch"] for c in cells if c["model"] == model}):
            sel = [c for c in cells if c["model"] == model and c["batch"] == batch]
            for stage in ("short", "long"):
                series: dict[str, list] = {"mdp": []}
                for c in sel:
                    if not c["mdp"].get(f"top1_{stage}") or c["mdp"][f"top1_{stage}"][0] != c["mdp"][f"top1_{stage}"][0]:
                        continue
                    tp = c[c["tp_best"]]
                    series["mdp"].append((c["mdp"].get("latency_fraction_remeasured", c["mdp"]["latency_fraction"]),
                                          c["mdp"][f"top1_{stage}"]))
                    series.setdefault(f"Torch-Pruning (best: {c['tp_best']})", []).append(
                        (tp.get("latency_fraction_remeasured", tp["latency_fraction"]), tp[f"top1_{stage}"]))
                if series["mdp"]:
                    bc.plot_accuracy_vs_latency(series, out / f"acc_vs_latency_{model}_b{batch}_{stage}.png",
                                                f"{model}, batch {batch}, {stage} finetune, mean ± sd over seeds")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,deit_tiny")
    p.add_argument("--budgets", default="0.2,0.3,0.5,0.7")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4, help="dense training epochs")
    p.add_argument("--ft-short", type=int, default=1)
    p.add_argument("--ft-long", type=int, default=3)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--repeats", type=int, default=100,
                   help="timed calls per model in each in-turns measurement (30 varied by 10-20 %% on a loaded machine)")
    p.add_argument("--match", type=float, default=0.02, help="relative latency match of the bisection")
    p.add_argument("--tp-settings", default=",".join(TP_SETTINGS))
    p.add_argument("--select-tolerance", type=float, default=0.05,
                   help="the baseline is chosen among Torch-Pruning models within this of mdp's latency (the "
                        "bisection's --match plus timing noise); none within it: the closest, flagged")
    p.add_argument("--prune-stem", dest="prune_stem", action="store_true", default=None,
                   help="mdp: let the CNN space prune the stem's channels (default: the family's)")
    p.add_argument("--keep-stem", dest="prune_stem", action="store_false", help="mdp: keep the stem's channels")
    bc.add_score_flags(p)
    p.add_argument("--min-keep", type=float,
                   help="mdp: solve.min_keep, every dim keeps at least this fraction of its width (default: no floor)")
    p.add_argument("--coupled", choices=("sum", "mean", "sqrt"),
                   help="mdp: score.coupled, how a residual (shared) dim combines its layers' scores (default: the "
                        "model family's)")
    p.add_argument("--remeasure", type=int, default=0,
                   help="after the cells: measure mdp's and the best Torch-Pruning model again with this many samples")
    p.add_argument("--fidelity", action="store_true", help="also the EfficientNet-Lite0 fidelity check")
    p.add_argument("--fidelity-budgets", default="0.5,0.7")
    p.add_argument("--fidelity-resolution", type=int, default=224)
    p.add_argument("--out", type=Path, default=bc.ROOT / "docs" / "bench" / "vs_torch_pruning")
    p.add_argument("--cache", type=Path, default=bc.ROOT / "runs" / "bench_cache")
    args = p.parse_args(argv)
    require_torch_pruning()
    import torch

    torch.set_num_threads(1)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.tp_settings = [s for s in args.tp_settings.split(",") if s]
    args.fidelity_budgets = [float(b) for b in args.fidelity_budgets.split(",")]
    unknown = set(args.tp_settings) - set(TP_SETTINGS)
    if unknown:
        sys.exit(f"--tp-settings: unknown {sorted(unknown)} (known: {', '.join(TP_SETTINGS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    for model_name in [m for m in args.models.split(",") if m]:
        train_data = bc.data_spec(args.train_subset, args.val_subset)
        weights = bc.train_dense(model_name, train_data, args.resolution, args.epochs, args.cache)
        from mdp_cli.data import data_config
        from mdp_cli.families import family_of
        from mdp_cli.train.engine import load_model

        dense = load_model(model_name, str(weights), 10, img_size=args.resolution).module.eval()
        config = data_config(dense, args.resolution)
        for batch in args.batches:
            cnn = family_of(model_name) == "cnn"  # prune_stem is a CNN space option
            space = {"prune_stem": args.prune_stem} if args.prune_stem is not None and cnn else None
            cfg = bc.mdp_config(model_name, weights, args.resolution, batch, bc.data_spec(args.train_subset, None),
                                args.cache, args.repeats, space=space, coupled=args.coupled,
                                score=bc.score_flags(args))
            suffix = bc.mdp_run_suffix(cfg)
            floor = f"_mk{args.min_keep:g}" if args.min_keep else ""
            run_dir = args.cache / "mdp" / f"{model_name}_{args.resolution}px_b{batch}{suffix}"
            discovered, problem = bc.prepare_mdp(cfg, run_dir)
            for budget in args.budgets:
                key = (f"{model_name}{suffix}{floor}_{args.resolution}px_b{batch}_{budget:g}_s{args.seeds}_e{args.ft_short}-"
                       f"{args.ft_long}_{args.train_subset}_{args.val_subset}_{'+'.join(args.tp_settings)}"
                       f"_sel{args.select_tolerance:g}")  # (cells before the matched-only selection: no suffix)
                cell = bc.cached(args.cache / "cells" / f"{key}.json",
                                 lambda: run_cell(args, model_name, weights, batch, budget,
                                                  (cfg, discovered, problem, run_dir), dense, config))
                cell["cache_key"], cell["mdp_suffix"], cell["mdp_floor"] = key, suffix, floor
                cell["mdp_settings"] = {"prune_stem": cfg["space"].get("prune_stem"), "coupled": cfg["score"]["coupled"],
                                       "objective": cfg["score"]["objective"],
                                       "criterion": cfg["score"]["criterion"], "min_keep": args.min_keep}
                cells.append(cell)
                report(cells, args, args.out)
    if args.remeasure:
        weights_for = {}
        for model_name in [m for m in args.models.split(",") if m]:
            weights = bc.train_dense(model_name, bc.data_spec(args.train_subset, args.val_subset), args.resolution,
                                     args.epochs, args.cache)
            dense = load_model(model_name, str(weights), 10, img_size=args.resolution).module.eval()
            weights_for[model_name] = weights
            remeasure([c for c in cells if c["model"] == model_name], args, dense,
                      data_config(dense, args.resolution), weights_for)
            for c in cells:  # keep the cache in step: a rerun keeps the remeasured numbers
                if c["model"] == model_name and c.get("cache_key"):
                    bc.write_json(args.cache / "cells" / f"{c['cache_key']}.json", c)
    if cells:
        report(cells, args, args.out)
        bc.log(f"written {args.out}/results.md")
    if args.fidelity:
        fid = bc.cached(args.cache / f"fidelity_{args.fidelity_resolution}px.json", lambda: fidelity(args, args.cache))
        report_fidelity(fid, args.out)
        bc.log(f"written {args.out}/fidelity.md")


if __name__ == "__main__":
    main()
