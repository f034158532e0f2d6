#!/usr/bin/env python
"""Write the solver problem of a ViT (default DeiT-Base: E shared by all 12 blocks) for timing the solver.

Tables come from a LUT (``--lut``, from ``mdp profile --model deit_...``) or, by default, from a FLOP-and-overhead cost
model of the same ops at the model's token count (synthetic but shaped like measured tables:
multilinear in (E, H, Q), (E, H, V), (E, M), the kernel in (H, max(Q, V)) as the exporter pads it,
plus per-op constants). Importance comes from ``--importance`` or from Taylor
scores of the random-init model on ``--batches`` synthetic batches.

    python scripts/vit_problem.py --model deit_base --out deit_base_problem.json --solve 0.5,0.3
    python scripts/vit_problem.py --lut docs/bench/deit_base_cpu_lut.csv --out p.json --solve 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli.importance.vit import vit_importance  # noqa: E402
from mdp_cli.models import canonical_name, create_model  # noqa: E402
from mdp_cli.space.vit import build_vit_space, vit_problem  # noqa: E402


def flop_tables(space, gflops_per_ms: float = 20.0, op_ms: float = 0.01):
    """Cost-model tables (ms): matmul FLOPs / throughput + a constant per kernel launch."""
    tables = {}
    for term in space.terms:
        n = term.context.get("tokens", 197) * term.context.get("batch", 1)
        opts = [np.asarray(space.dim(d).options, float) for d in term.dims]
        k = 2e-6 / gflops_per_ms  # 2 FLOPs per MAC, ms per FLOP
        if term.op == "vit_qk":
            E, H, Q = np.meshgrid(*opts, indexing="ij")
            t = k * n * E * 2 * H * Q + 2 * op_ms + 2e-6 * n * E
        elif term.op == "vit_vproj":
            E, H, V = np.meshgrid(*opts, indexing="ij")
            t = k * (n * E * H * V + n * H * V * E) + op_ms + 1e-6 * n * E
        elif term.op == "vit_sdpa":
            H, Q, V = np.meshgrid(*opts, indexing="ij")
            t = k * 2 * n * n * H * np.maximum(Q, V) + 3e-6 * n * n * H + 4 * op_ms  # padded to max(Q, V)
        elif term.op == "vit_mlp":
            E, M = np.meshgrid(*opts, indexing="ij")
            t = k * 2 * n * E * M + 4e-6 * n * M + 4 * op_ms
        elif term.op == "vit_stem":
            E = opts[0]
            t = k * n * E * 3 * 16 * 16 + 2 * op_ms
        else:
            E = opts[0]
            t = k * E * 1000 * term.context.get("batch", 1) + 2 * op_ms
        tables[term.name] = t
    return tables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_base")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--steps", default="embed=16,heads=1,qk=8,v=8,mlp=64")
    ap.add_argument("--lut")
    ap.add_argument("--importance")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--solve", default=None, help="comma-separated budgets to time mdp_cli.solve.solve_problem on")
    ap.add_argument("--time-limit", type=float, default=300.0)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(1)
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    model = create_model(args.model, img_size=args.img_size)
    space = build_vit_space(model, canonical_name(args.model), steps)
    if args.lut:
        from mdp_cli.latency.lut import Lut
        from mdp_cli.latency.vit_tables import rows_from_lut, vit_tables

        import pandas as pd

        first = pd.read_csv(args.lut, nrows=1).iloc[0]  # the LUT's own device/dtype/batch/threads
        lut = Lut.open(args.lut, str(first["device"]), str(first["dtype"]), int(first["batch"]), int(first["threads"]),
                       create=False)
        tables = vit_tables(space, {"rows": rows_from_lut(lut, space)})
    else:
        tables = flop_tables(space)
    if args.importance:
        importance = json.loads(Path(args.importance).read_text())
    else:
        t0 = time.perf_counter()
        data = [(torch.randn(2, 3, args.img_size, args.img_size), torch.randint(0, 1000, (2,)))
                for _ in range(args.batches)]
        importance = vit_importance(model, data, space)
        print(f"importance: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    problem = vit_problem(space, tables, importance, tables_source=args.lut or "flop_model")
    problem.save(args.out)
    sizes = {d.name: len(d.options) for d in space.dims}
    print(json.dumps({"out": args.out, "dims": len(space.dims), "terms": len(space.terms), "blocks": len(space.blocks),
                      "options_embed": sizes["embed"], "dense_latency_ms": problem.dense_latency,
                      "table_entries": int(sum(np.asarray(t).size for t in tables.values()))}))
    if args.solve:
        from mdp_cli.solve import load_problem, solve_problem

        loaded = load_problem(args.out)
        for budget in args.solve.split(","):
            t0 = time.perf_counter()
            sol = solve_problem(loaded, float(budget), threads=1, time_limit=args.time_limit)
            print(json.dumps({"budget": float(budget), "seconds": round(time.perf_counter() - t0, 2),
                              "status": getattr(sol, "status", None), "gap": getattr(sol, "gap", None),
                              "predicted_latency": getattr(sol, "predicted_latency", None),
                              "embed": sol.choice.get("embed"), "blocks_kept": sum(sol.kept.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
