"""Importance criteria on a real pretrained network: the built-in EfficientNet-Lite0 (ImageNet weights) pruned by
mdp at several budgets with each scoring setting, and how much of the dense network's function each keeps
without finetuning: top-1 agreement with the dense model and KL(dense ‖ pruned) on real photographs.

    python scripts/bench_criteria_lite0.py --budgets 0.5,0.7,0.9 --out docs/bench/criteria/lite0

No ImageNet here, so only label-free objectives (``pseudo_labels``, ``distill``). Scoring data: Fashion-MNIST
(``--score-data builtin:fashion-mnist?train=512``, out of domain) or ``--score-data photos``: random crops of the
other natural images bundled with scikit-image, scikit-learn and matplotlib (textures, coins, a clock, a horse,
faces, a palace, a flower, a portrait) — unlabelled in-domain images, disjoint from the evaluation photos, which
are scikit-image's other bundled photographs (each also flipped), never used for scoring. All latencies are measured in turns with the dense model in this
process, one thread. Output: results.json, results.md, agreement_vs_latency.png.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

MODEL = "tf_efficientnet_lite0"
SETTINGS = {  # score settings (and the solver's floor) per named setting, every key explicit (not the family's default)
    "pseudo_labels": {"objective": "pseudo_labels", "criterion": "taylor"},
    "pseudo_labels+fisher": {"objective": "pseudo_labels", "criterion": "fisher"},
    "distill+fisher": {"objective": "distill", "criterion": "fisher"},
    "distill": {"objective": "distill", "criterion": "taylor"},
    "pseudo_labels+norm-sum": {"objective": "pseudo_labels", "criterion": "taylor", "normalize": "sum"},
    "distill+fisher+norm-sum": {"objective": "distill", "criterion": "fisher", "normalize": "sum"},
    "pseudo_labels+norm-mean": {"objective": "pseudo_labels", "criterion": "taylor", "normalize": "mean"},
    "pseudo_labels+min_keep0.25": {"objective": "pseudo_labels", "criterion": "taylor", "min_keep": 0.25},
}


def scoring_photos(root: Path, crops: int = 24, seed: int = 0) -> Path:
    """An ImageFolder (one unlabelled class) of random crops of the natural images bundled with scikit-image,
    scikit-learn and matplotlib that the evaluation (``bench_common.real_photos``) does not use."""
    import os

    import matplotlib
    import numpy as np
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    folder = root / "unlabelled"
    if folder.is_dir() and any(folder.iterdir()):
        return root
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name in ("brick", "grass", "gravel", "coins", "clock", "text", "horse"):
        a = np.asarray(getattr(skdata, name)())
        arrays.append((a * 255).astype(np.uint8) if a.dtype == bool else a)
    arrays += list(load_sample_images().images)  # a palace, a flower
    arrays.append(np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))))
    arrays += list(skdata.lfw_subset()[:8])  # faces, 25 px (upsampled by the crops)
    rng = np.random.default_rng(seed)
    for i, a in enumerate(arrays):
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(a).convert("RGB")
        w, h = image.size
        for k in range(crops):
            scale = rng.uniform(0.3, 1.0)
            cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image.crop((x, y, x + cw, y + ch)).resize((256, 256), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{i:02d}_{k:02d}.png")
    return root


def setting_config(name: str, args):
    """(mdp config, cached run directory, solver floor) of one named setting."""
    from mdp_cli.config import load_config

    setting = dict(SETTINGS[name])
    min_keep = setting.pop("min_keep", None)
    cfg = load_config(None, {"model": MODEL, "resolution": args.resolution, "pretrained": "builtin:efficientnet-lite0",
                             "profile": {"batch": 1, "threads": 1, "repeats": args.repeats,
                                         "lut_dir": str(args.cache / "luts")},
                             "score": {"data": args.score_source, "batches": args.score_batches, "batch_size": 32,
                                       "seed": 0, **setting},
                             "export": {"tolerance": 10.0, "measure": True, "repeats": args.repeats}})
    run_dir = (args.cache / f"criteria_{MODEL}_{args.resolution}{bc.mdp_run_suffix(cfg)}"
               f"{'_photos' if args.score_data == 'photos' else ''}")
    return cfg, run_dir, min_keep


def run_setting(name: str, args, dense, photos, dense_logits) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from mdp_cli.errors import MdpError

    cfg, run_dir, min_keep = setting_config(name, args)
    discovered, problem = bc.prepare_mdp(cfg, run_dir)
    rows = []
    for budget in args.budgets:
        try:
            module, solution = bc.mdp_prune(cfg, discovered, problem, run_dir, budget,
                                            name="mdp" + (f"_mk{min_keep:g}" if min_keep else ""), min_keep=min_keep)
        except MdpError as exc:
            rows.append({"setting": name, "budget": budget, "infeasible": str(exc)})
            continue
        lat = bc.ratio_in_turns(module, dense, 1, args.resolution, args.repeats)
        with torch.no_grad():
            logits = module.eval()(photos)
        agree = (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item() * 100
        top5 = (dense_logits.argmax(-1, keepdim=True) == logits.topk(5, -1).indices).any(-1).float().mean().item() * 100
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(dense_logits, -1), log_target=True,
                      reduction="batchmean").item()
        thin = sorted(solution.choice.items(), key=lambda kv: kv[1])[:3]
        rows.append({"setting": name, "budget": budget, "predicted_fraction": solution.latency_ratio,
                     "latency_fraction": lat["ratio"], "top1_agreement": agree, "dense_top1_in_top5": top5, "kl": kl,
                     "importance_kept": solution.objective / solution.dense_objective,
                     "blocks_removed": sorted(b for b, k in solution.kept.items() if not k),
                     "choice": dict(solution.choice), "images": len(photos)})
        bc.log(f"{name} {budget}: {lat['ratio']:.3f} of dense, agreement {agree:.1f} %, top-5 {top5:.1f} %, "
               f"KL {kl:.3f}, thinnest {thin}")
    return rows


def probe(args, dense, photos, dense_logits) -> dict:
    """One dim at a time: each dim cut to the largest option at most ``args.probe_keep`` of its width (the rest
    dense), with the units each setting's importance ranks lowest removed; the damage measured (KL to dense,
    top-1 agreement on the photos) against what the setting's importance says is lost. A criterion the solver
    can trust ranks these cuts as the damage does (Spearman across dims)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mdp_cli.importance.taylor import read_importance
    from mdp_cli.pipeline import discover, family_of_config

    result: dict = {"keep": args.probe_keep, "settings": {}}
    for name in args.settings:
        cfg, run_dir, _ = setting_config(name, args)
        if not (run_dir / "importance.json").is_file():
            continue
        dims = read_importance(run_dir / "importance.json")["dims"]
        family, discovered = family_of_config(cfg), discover(cfg)
        total = sum(rec["cumulative"][-1] for rec in dims.values())
        rows = []
        for dim in discovered.space.dims:
            rec = dims[dim.name]
            smaller = [k for k, o in enumerate(rec["options"]) if o <= args.probe_keep * dim.size]
            if not smaller:
                continue
            k = smaller[-1]
            choice = {d.name: d.size for d in discovered.space.dims} | {dim.name: rec["options"][k]}
            module, _ = family.export(discovered, choice, {}, dims)
            with torch.no_grad():
                logits = module.eval()(photos)
            rows.append({"dim": dim.name, "width": dim.size, "kept": rec["options"][k],
                         "importance_lost": (rec["cumulative"][-1] - rec["cumulative"][k]) / total,
                         "kl": F.kl_div(F.log_softmax(logits, -1), F.log_softmax(dense_logits, -1), log_target=True,
                                        reduction="batchmean").item(),
                         "top1_agreement": (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item() * 100})
        lost, kl = np.asarray([r["importance_lost"] for r in rows]), np.asarray([r["kl"] for r in rows])
        ranks = [np.argsort(np.argsort(v)) for v in (lost, kl)]
        rho = float(np.corrcoef(*ranks)[0, 1])
        result["settings"][name] = {"rows": rows, "spearman_importance_vs_kl": rho,
                                    "median_kl": float(np.median(kl)), "mean_kl": float(np.mean(kl))}
        bc.log(f"probe {name}: {len(rows)} dims, Spearman(importance lost, KL) {rho:.2f}, "
               f"median KL {np.median(kl):.3f}")
    return result


def report_probe(result: dict, args) -> None:
    bc.write_json(args.out / "probe.json", result)
    lines = [f"# One dim at a time: {MODEL}, each dim cut to at most {result['keep']:g} of its width", "",
             f"Command: `python scripts/bench_criteria_lite0.py {' '.join(sys.argv[1:])}`", "",
             "Per setting: the units its importance ranks lowest removed from one dim, the rest dense; KL(dense ‖ cut) "
             "and top-1 agreement on the evaluation photos; Spearman: across dims, the importance the setting says "
             "is lost (share of its total) against the measured KL — how far the solver can trust it to weigh one "
             "dim against another.", "",
             bc.markdown_table([{"setting": n, **{k: v for k, v in r.items() if k != "rows"}}
                                for n, r in result["settings"].items()],
                               [("setting", "setting"), ("spearman_importance_vs_kl", "Spearman(importance lost, KL)"),
                                ("median_kl", "median KL"), ("mean_kl", "mean KL")])]
    for name, r in result["settings"].items():
        worst = sorted(r["rows"], key=lambda row: -row["kl"])[:8]
        lines += ["", f"{name}: the 8 most damaging cuts", "",
                  bc.markdown_table(worst, [("dim", "dim"), ("width", "width"), ("kept", "kept"),
                                            ("importance_lost", "importance lost (share)"), ("kl", "KL"),
                                            ("top1_agreement", "agreement %")])]
    (args.out / "probe.md").write_text("\n".join(lines) + "\n")


def report(rows: list[dict], args) -> None:
    out = args.out
    bc.write_json(out / "results.json", {"settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                                         "model": MODEL, "rows": rows})
    table = [r | {"blocks": len(r.get("blocks_removed", []))} for r in rows if "infeasible" not in r]
    lines = [f"# Importance criteria on {MODEL} (real ImageNet weights), no finetuning", "",
             f"Command: `python scripts/bench_criteria_lite0.py {' '.join(sys.argv[1:])}`", "",
             f"{args.resolution} px, batch 1, one thread; scored on {args.score_batches} x 32 images of "
             f"`{args.score_data}` ({'crops of bundled natural images, disjoint from the evaluation photos' if args.score_data == 'photos' else 'out of domain'}; label-free objectives only); evaluated on "
             f"{table[0]['images'] if table else 0} real photos (scikit-image's, each also flipped), never scored on. "
             "Agreement: the pruned model's top-1 equals the dense model's; top-5: the dense top-1 is in the pruned "
             "top-5; KL = KL(dense ‖ pruned) of the softmax outputs, mean over the photos. Latency measured in turns "
             "with dense.", "",
             bc.markdown_table(table, [("budget", "budget"), ("setting", "setting"), ("predicted_fraction", "tables"),
                                       ("latency_fraction", "measured lat/dense"), ("blocks", "blocks removed"),
                                       ("importance_kept", "importance kept"), ("top1_agreement", "top-1 agreement %"),
                                       ("dense_top1_in_top5", "dense top-1 in top-5 %"), ("kl", "KL")])]
    infeasible = [r for r in rows if "infeasible" in r]
    if infeasible:
        lines += ["", "Not reachable: " + "; ".join(f"{r['setting']} at {r['budget']}: {r['infeasible']}"
                                                   for r in infeasible)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    curves = {}
    for name in dict.fromkeys(r["setting"] for r in table):
        pts = sorted((r["latency_fraction"], r["top1_agreement"]) for r in table if r["setting"] == name)
        curves[name] = ([p[0] for p in pts], [p[1] for p in pts])
    bc.line_plots([(f"{MODEL}, {args.resolution} px, no finetuning", "measured latency / dense (in turns)",
                    "top-1 agreement with dense (%)", curves)], out / "agreement_vs_latency.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="0.5,0.7,0.9")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"known: {', '.join(SETTINGS)}")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--score-data", default="builtin:fashion-mnist?train=512",
                   help="a data spec, or 'photos': crops of bundled natural images not used for evaluation")
    p.add_argument("--score-batches", type=int, default=8)
    p.add_argument("--probe", action="store_true",
                   help="instead: cut one dim at a time and compare each setting's importance with the damage")
    p.add_argument("--probe-keep", type=float, default=0.75)
    p.add_argument("--out", type=Path, default=bc.ROOT / "docs" / "bench" / "criteria" / "lite0")
    p.add_argument("--cache", type=Path, default=bc.ROOT / "runs" / "bench_cache")
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.settings = [s for s in args.settings.split(",") if s]
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        sys.exit(f"--settings: unknown {sorted(unknown)} (known: {', '.join(SETTINGS)})")
    import torch

    from mdp_cli.train.engine import load_model

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    args.score_source = (str(scoring_photos(args.cache / "scoring_photos")) if args.score_data == "photos"
                         else args.score_data)
    dense = load_model(MODEL, "builtin:efficientnet-lite0", img_size=args.resolution).module.eval()
    photos = bc.real_photos(dense)
    with torch.no_grad():
        dense_logits = copy.deepcopy(dense)(photos)
    if args.probe:
        report_probe(probe(args, dense, photos, dense_logits), args)
        bc.log(f"written {args.out}/probe.md")
        return
    rows: list[dict] = []
    for name in args.settings:
        key = (f"criteria_lite0_{args.resolution}px_{name}_{'+'.join(f'{b:g}' for b in args.budgets)}_"
               f"{args.score_batches}_{args.score_data}".replace("/", "_").replace("?", "_"))
        rows += bc.cached(args.cache / "cells" / f"{key}.json", lambda: run_setting(name, args, dense, photos, dense_logits))
        report(rows, args)
    bc.log(f"written {args.out}/results.md")


if __name__ == "__main__":
    main()
