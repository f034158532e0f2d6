#!/usr/bin/env python
"""Bench the Swin latency model: Σ of the per-block tables (swin_attn(H, Q, V) + swin_mlp(M) of kept
branches + stem, merges, head) vs whole exported models, timed in turns with the dense export.

Profiles the space into a throw-away LUT (as ``mdp profile`` does: sub-grid per dim, chains of copies,
rounds), exports ``--configs`` random configurations (random option of every dim; optionally random
branch removal) and reports ``err`` (prediction vs the configuration's median time) and ``ratio_err``
(predicted fraction of dense vs measured fraction of dense: cancels the drift of a shared machine).
Real numbers need a quiet machine; on a loaded one run it only at a tiny size, e.g.

    python scripts/bench_latency_model_swin.py --img-size 56 --configs 2 --grid heads=2,qk=2,v=2,hidden=2 \\
        --warmup 1 --samples 3 --rounds 1
    python scripts/bench_latency_model_swin.py --configs 30 --out bench_swin_tiny.json      # 224 px, quiet machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latency_bench_common import error_summary, random_configs, time_in_rounds  # noqa: E402  (scripts/ is on sys.path)
from mdp_cli.latency.vit_tables import predict_latency, rows_from_lut, term_tables  # noqa: E402
from mdp_cli.pipeline import family_of_config, load_config, open_lut, stage_profile  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--remove-prob", type=float, default=0.0, help="probability of removing each branch")
    ap.add_argument("--grid", default="heads=4,qk=3,v=3,hidden=5", help="sub-grid points per dim")
    ap.add_argument("--steps", default=None, help="e.g. heads=1,qk=8,v=8,mlp=64")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, {"model": args.model, "resolution": args.img_size,
                                 "space": {"steps": args.steps} if args.steps else {},
                                 "profile": {"grid": args.grid, "warmup": args.warmup, "repeats": args.samples,
                                             "lut_dir": tmp}})
        family = family_of_config(cfg)
        discovered = family.discover(cfg)
        space = discovered.space
        t0 = time.perf_counter()
        summary = stage_profile(cfg, discovered, progress=False)
        profile_s = time.perf_counter() - t0
        lut = open_lut(cfg)
        planned = {m.key for m in family.measurements(discovered, cfg["profile"]["grid"])}
        rows = rows_from_lut(lut, space, only=planned)
    tables = term_tables(space, rows)
    print(f"{args.model} img {args.img_size}: profiled {summary['measured']} configurations in {profile_s:.1f} s",
          flush=True)

    x = torch.randn(1, *space.input_shape)
    dense, _ = family.export(discovered, {}, {}, None)
    dense_pred = predict_latency(space, tables, {})
    configs = random_configs(space, args.configs, args.remove_prob, args.seed,
                             [b.name for b in space.blocks if b.removable],
                             lambda choice, kept: family.export(discovered, choice, kept, None)[0])
    samples, _ = time_in_rounds([pruned for _, _, pruned in configs], dense, x, args.warmup, args.samples,
                                args.rounds, "cpu")
    out_rows = []
    for n, (choice, kept, _) in enumerate(configs):
        measured, measured_dense = statistics.median(samples[n][0]), statistics.median(samples[n][1])
        pred = predict_latency(space, tables, choice, kept)
        row = {"measured_ms": measured, "dense_measured_ms": measured_dense, "predicted_ms": pred,
               "err": pred / measured - 1, "ratio_err": (pred / dense_pred) / (measured / measured_dense) - 1}
        out_rows.append(row)
        print(f"[{n + 1}/{args.configs}] measured {measured:8.3f} ms (dense {measured_dense:8.3f})  predicted "
              f"{pred:8.3f} ({100 * row['err']:+6.1f}%, vs dense {100 * row['ratio_err']:+6.1f}%)", flush=True)
    result = {"model": args.model, "img_size": args.img_size, "configs": args.configs, "grid": args.grid,
              "profile_seconds": round(profile_s, 1), "dense_predicted_ms": dense_pred}
    for err in ("err", "ratio_err"):
        result.update(error_summary(out_rows, err))
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": result, "rows": out_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
