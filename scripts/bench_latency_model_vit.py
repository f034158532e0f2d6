#!/usr/bin/env python
"""Bench the ViT latency model: multi-dimensional tables vs a linear per-dim model vs measurement.

Profiles the model's space (sub-grid + interpolation, as ``mdp profile`` does), then exports N random
configurations (random option of every dim; optionally random branch removal), measures each whole
exported model (median of ``--samples`` calls after ``--warmup``) and compares with

- ``multi``: Σ of the multi-dimensional tables (qk(E,H,Q) + vproj(E,H,V) + sdpa(H,Q,V) + mlp(E,M) + stem(E)
  + head(E));
- ``linear``: a HALP-style linear per-dim model built from the same tables: each term's latency is its
  full-size value minus, for each of its dims, a constant cost per removed unit (the slope between the
  smallest and the full size with the other dims at full size).

Each configuration is timed in turns with the dense exported model, in ``--rounds`` passes over all
configurations (samples pooled, then the median). Reported per model: ``err``
(prediction vs the configuration's absolute median time) and ``ratio_err`` (predicted speed-up over
dense vs the measured one, which cancels the load drift of a shared machine between profiling and
measuring). Prints and (``--out``) writes median and worst absolute errors of each. Example:

    python scripts/bench_latency_model_vit.py --model deit_small --configs 30 --out bench_deit_small.json
    python scripts/bench_latency_model_vit.py --model vit_small_patch14_dinov2 --img-size 224 --configs 30 \
        --out bench_dinov2_small.json     # any ViT the family supports (DINOv2: patch 14, 257 tokens)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latency_bench_common import error_summary, random_configs, time_in_rounds  # noqa: E402  (scripts/ is on sys.path)
from mdp_cli.export.vit import export_vit  # noqa: E402
from mdp_cli.latency.vit_plan import profile_vit  # noqa: E402
from mdp_cli.latency.vit_tables import linear_tables, predict_latency, vit_tables  # noqa: E402
from mdp_cli.models import canonical_name, create_model  # noqa: E402
from mdp_cli.space.vit import build_vit_space  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--remove-prob", type=float, default=0.0, help="probability of removing each branch")
    ap.add_argument("--grid", default="embed=5,heads=4,qk=3,v=3,hidden=5", help="sub-grid points per dim")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="passes over all configurations (samples split among them)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    grid = {k: int(v) for k, v in (kv.split("=") for kv in args.grid.split(","))}
    model = create_model(args.model, img_size=args.img_size)
    space = build_vit_space(model, canonical_name(args.model))
    t0 = time.perf_counter()
    lut = profile_vit(space, device=args.device, grid=grid, warmup=args.warmup, samples=args.samples)
    profile_s = time.perf_counter() - t0
    tables = vit_tables(space, lut)
    lin = linear_tables(space, tables)
    print(f"{args.model} img {args.img_size}: profiled {lut['provenance']['configurations']} configurations in "
          f"{profile_s:.1f} s", flush=True)

    x = torch.randn(1, 3, args.img_size, args.img_size)
    dense, _ = export_vit(model, {})
    dense_multi = predict_latency(space, tables, {})
    dense_linear = predict_latency(space, lin, {})
    configs = random_configs(space, args.configs, args.remove_prob, args.seed, [b.name for b in space.blocks],
                             lambda choice, kept: export_vit(model, choice, kept)[0])
    samples, per_round = time_in_rounds([pruned for _, _, pruned in configs], dense, x, args.warmup, args.samples,
                                        args.rounds, args.device, log=lambda line: print(line, flush=True))
    rows = []
    for n, (choice, kept, _) in enumerate(configs):
        measured, measured_dense = statistics.median(samples[n][0]), statistics.median(samples[n][1])
        multi = predict_latency(space, tables, choice, kept)
        linear = predict_latency(space, lin, choice, kept)
        ratio = measured / measured_dense
        rows.append({"measured_ms": measured, "dense_measured_ms": measured_dense, "multi_ms": multi, "linear_ms": linear,
                     "multi_err": multi / measured - 1, "linear_err": linear / measured - 1,
                     "multi_ratio_err": multi / dense_multi / ratio - 1, "linear_ratio_err": linear / dense_linear / ratio - 1,
                     "embed": choice["embed"]})
        r = rows[-1]
        print(f"[{n + 1}/{args.configs}] measured {measured:8.3f} ms (dense {measured_dense:8.3f})  "
              f"multi {multi:8.3f} ({100 * r['multi_err']:+6.1f}%, vs dense {100 * r['multi_ratio_err']:+6.1f}%)  "
              f"linear {linear:8.3f} ({100 * r['linear_err']:+6.1f}%, vs dense {100 * r['linear_ratio_err']:+6.1f}%)",
              flush=True)
    del configs

    summary = {"model": canonical_name(args.model), "img_size": args.img_size, "device": args.device,
               "threads": 1, "configs": args.configs, "remove_prob": args.remove_prob, "grid": grid,
               "rounds": args.rounds, "samples": per_round * args.rounds,
               "profile_seconds": round(profile_s, 1), "measurements": lut["provenance"]["configurations"]}
    summary["dense_predicted_ms"] = dense_multi
    summary["dense_measured_ms_median"] = statistics.median(r["dense_measured_ms"] for r in rows)
    summary["dense_measured_ms_range"] = [min(r["dense_measured_ms"] for r in rows), max(r["dense_measured_ms"] for r in rows)]
    for kind in ("multi", "linear"):
        for err in ("err", "ratio_err"):
            summary.update(error_summary(rows, f"{kind}_{err}", signed=True))
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
