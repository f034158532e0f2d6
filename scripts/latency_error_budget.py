"""Where does the latency model's error come from? A decomposition, measured (issue 16, docs/latency.md).

For one CNN and N random pruned configurations (as in bench_latency_model.py), measure:

- ``measured``: the whole exported network, in turns with the dense one (fraction of dense);
- ``lut_a`` / ``lut_b``: the LUT prediction (sum of terms) from two LUTs profiled independently, minutes apart:
  their disagreement is what drift and sampling noise during profiling do to the prediction;
- ``in_chain``: every node of the exported network timed *inside* the real forward pass (a clock around each
  node), summed per latency term: the cost each term really has where it runs. ``lut`` vs ``in_chain`` per
  term is the error of timing ops alone (cache state, per-call overhead); ``in_chain`` sum vs ``measured``
  is what the terms do not cover (the graph interpreter's own work between nodes: the "constant").

All on 1 thread with the thread CPU clock; every ratio is taken against the dense network timed in the same
rounds, so a drift of the machine during measurement cancels. Writes JSON with the per-configuration rows and
a per-op-kind summary.

    python scripts/latency_error_budget.py --model resnet50 --resolution 64 --configs 20
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mdp_cli.latency.cnn_ops  # noqa: E402,F401  (registers the CNN latency ops)
from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.export.cnn_prune import prune_cnn  # noqa: E402
from mdp_cli.latency.lut import Lut  # noqa: E402
from mdp_cli.latency.profile import CHAIN_COPIES, GRID_TIMING, profile_space  # noqa: E402
from mdp_cli.latency.timing import cpu_clock, threads, time_round_robin  # noqa: E402
from mdp_cli.latency.to_problem import build_problem, choice_indices  # noqa: E402
from mdp_cli.modules.cnn import apply_node  # noqa: E402
from mdp_cli.space.cnn import discover_space  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency_model import random_config  # noqa: E402


def node_terms(net, term_names: set[str]) -> dict[str, str | None]:
    """Node -> the latency term that covers it: a term is named after its first node; a conv's BN and
    activation follow it and belong to it; anything else is glue (None)."""
    owner, current = {}, None
    for n in net.nodes:
        if n["name"] in term_names:
            current = n["name"]
        elif n["op"] not in ("bn", "act"):
            current = None
        owner[n["name"]] = current
    return owner


@torch.inference_mode()
def timed_forward(net, x, clock, acc: dict[str, float]) -> None:
    """GraphNet.forward with a clock around each node; adds ms per node into ``acc``."""
    values = {}
    for n, free in zip(net.nodes, net._free):
        op, name = n["op"], n["name"]
        if op == "input":
            values[name] = x
            continue
        args = [values[i] for i in n["inputs"]]
        if op == "output":
            break
        t0 = clock()
        y = apply_node(op, n["attrs"], net.layers[name] if name in net.layers else None, args)
        acc[name] += (clock() - t0) * 1e3
        for f in free:
            del values[f]
        values[name] = y


def in_chain_terms(nets, x, warmup: int, repeats: int) -> list[dict[str, float]]:
    """Median in-chain ms per node for each net, the nets taking turns (one pass each per round)."""
    clock = cpu_clock()
    samples = [defaultdict(list) for _ in nets]
    for r in range(warmup + repeats):
        for k, net in enumerate(nets):
            acc = defaultdict(float)
            timed_forward(net, x, clock, acc)
            if r >= warmup:
                for name, ms in acc.items():
                    samples[k][name].append(ms)
    return [{name: statistics.median(v) for name, v in s.items()} for s in samples]


SIZE_BINS_MS = (0.01, 0.03, 0.1, 0.3)


def size_bin(ms: float) -> str:
    """A term's LUT time as a bin label: '<0.01ms', '0.01-0.03ms', ..., '>=0.3ms'."""
    for i, edge in enumerate(SIZE_BINS_MS):
        if ms < edge:
            return f"<{edge}ms" if i == 0 else f"{SIZE_BINS_MS[i - 1]}-{edge}ms"
    return f">={SIZE_BINS_MS[-1]}ms"


def per_term(problem, idx, kept) -> dict[str, float]:
    return {t.name: float(t.table[tuple(idx[d] for d in t.dims)]) for t in problem.terms
            if t.block is None or kept.get(t.block, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--configs", type=int, default=20)
    parser.add_argument("--max-options", type=int, default=8)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=GRID_TIMING.rounds)
    parser.add_argument("--recheck", type=float, default=GRID_TIMING.recheck)
    parser.add_argument("--chain", default=",".join(f"{k}={v}" for k, v in CHAIN_COPIES.items()),
                        help="op=copies,... ops profiled as chains of copies ('' for none)")
    parser.add_argument("--out", default="latency_error_budget.json")
    args = parser.parse_args()
    plan = dataclasses.replace(GRID_TIMING, rounds=args.rounds, recheck=args.recheck)
    chain = {k: int(v) for k, v in (p.split("=") for p in args.chain.split(",") if p)}

    torch.manual_seed(args.seed)
    model, analysis = discover_space(args.model, args.resolution, max_options=args.max_options, multiple=args.multiple)
    problems, profile_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            t0 = time.perf_counter()
            summary = profile_space(analysis.space, lut_dir=Path(tmp) / f"lut{k}", warmup=args.warmup,
                                    repeats=args.repeats, progress=False, plan=plan, chain=chain)
            profile_s.append(time.perf_counter() - t0)
            lut = Lut.open(summary["lut"], summary["device"], summary["dtype"], 1, 1)
            refs = lut.frame["ref_ms"].astype(float)
            print(f"LUT {k}: {summary['measured']} rows in {profile_s[-1]:.0f} s; reference op "
                  f"{refs.min():.4f}-{refs.max():.4f} ms (max/min {refs.max() / refs.min():.3f})", flush=True)
            problems.append(build_problem(analysis.space, lut, None, with_counts=False))
            # the same rows read relative to the reference op of their own rounds (stat "ref": drift normalised)
            norm = Lut.open(summary["lut"], summary["device"], summary["dtype"], 1, 1, stat="ref")
            problems.append(build_problem(analysis.space, norm, None, with_counts=False))
    term_names = {t.name for t in analysis.space.terms}
    rng = random.Random(args.seed)
    x = torch.randn(1, 3, args.resolution, args.resolution)
    rows = []
    kinds = {t.name: t.op for t in analysis.space.terms}
    kind_ratio = defaultdict(list)  # op kind -> lut / in-chain per term occurrence
    # per LUT (A, B): (op kind, LUT-ms bin) -> lut / in-chain. Do small ops read low, the table's doing or the op's?
    size_ratio = {"lut_over_chain_by_size": defaultdict(list), "lut_b_over_chain_by_size": defaultdict(list)}
    with threads(1):
        dense_net, _ = prune_cnn(model, analysis, {}, {})
        owner_dense = node_terms(dense_net, term_names)
        for k in range(args.configs):
            ratio = 0.0 if k == 0 else rng.uniform(0.05, 0.95)
            choice, kept = ({}, {}) if k == 0 else random_config(analysis, rng, ratio)
            net, _ = prune_cnn(model, analysis, choice, kept)
            (measured, _, _), (dense_now, _, _) = time_round_robin([(net, x), (dense_net, x)], warmup=args.warmup,
                                                                   repeats=args.repeats)
            chain, chain_dense = in_chain_terms([net, dense_net], x, args.warmup, args.repeats)
            owner = node_terms(net, term_names)
            chain_terms, glue = defaultdict(float), 0.0
            for name, ms in chain.items():
                if owner.get(name):
                    chain_terms[owner[name]] += ms
                else:
                    glue += ms
            dense_chain_sum = sum(chain_dense.values())
            dense_glue = sum(ms for name, ms in chain_dense.items() if not owner_dense.get(name))
            idx = choice_indices(problems[0], choice)
            pred = [p.latency(idx, kept) / p.dense_latency for p in problems[::2]]
            pred_norm = [p.latency(idx, kept) / p.dense_latency for p in problems[1::2]]
            lut_terms = per_term(problems[0], idx, kept)
            for name, ms in lut_terms.items():
                if chain_terms.get(name):
                    kind_ratio[kinds[name]].append(ms / chain_terms[name])
            for ratios, terms in zip(size_ratio.values(), (lut_terms, per_term(problems[2], idx, kept))):
                for name, ms in terms.items():
                    if chain_terms.get(name):
                        ratios[f"{kinds[name]} {size_bin(ms)}"].append(ms / chain_terms[name])
            chain_sum = sum(chain.values())
            row = {"config": k, "ratio": ratio, "measured_fraction": measured / dense_now, "measured_ms": measured,
                   "dense_ms": dense_now, "lut_a_fraction": pred[0], "lut_b_fraction": pred[1],
                   "lut_a_norm_fraction": pred_norm[0], "lut_b_norm_fraction": pred_norm[1],
                   "in_chain_fraction": chain_sum / dense_chain_sum,
                   "in_chain_terms_fraction": sum(chain_terms.values()) / (dense_chain_sum - dense_glue),
                   "lut_ms": sum(lut_terms.values()), "in_chain_ms": chain_sum, "in_chain_glue_ms": glue,
                   "whole_minus_nodes_ms": measured - chain_sum}
            rows.append(row)
            rel = lambda f: f / row["measured_fraction"] - 1  # noqa: E731
            print(f"{k:3d} measured {row['measured_fraction']:6.1%}  lutA {rel(pred[0]):+6.1%}  lutB {rel(pred[1]):+6.1%}"
                  f"  norm {rel(pred_norm[0]):+6.1%} {rel(pred_norm[1]):+6.1%}"
                  f"  in-chain {rel(row['in_chain_fraction']):+6.1%}  lut/chain ms {row['lut_ms'] / chain_sum:5.3f}"
                  f"  whole-nodes {row['whole_minus_nodes_ms']:+.3f} ms of {measured:.3f}", flush=True)

    def stats(values):
        values = list(values)
        return {"median_abs": statistics.median(abs(v) for v in values), "worst_abs": max(abs(v) for v in values),
                "mean_signed": statistics.fmean(values)}

    high = [r for r in rows if r["measured_fraction"] < 0.4]
    out = {"model": args.model, "resolution": args.resolution, "profile_seconds": profile_s, "configs": len(rows),
           "high_pruning_configs": len(high)}
    for name in ("lut_a", "lut_b", "lut_a_norm", "lut_b_norm", "in_chain", "in_chain_terms"):
        out[name] = stats(r[f"{name}_fraction"] / r["measured_fraction"] - 1 for r in rows)
        if high:
            out[name + "_high"] = stats(r[f"{name}_fraction"] / r["measured_fraction"] - 1 for r in high)
    out["lut_a_vs_b"] = stats(r["lut_a_fraction"] / r["lut_b_fraction"] - 1 for r in rows)
    out["lut_a_vs_b_norm"] = stats(r["lut_a_norm_fraction"] / r["lut_b_norm_fraction"] - 1 for r in rows)
    for field, ratios in size_ratio.items():
        out[field] = {key: {"median": statistics.median(v), "n": len(v)} for key, v in sorted(ratios.items())}
    out["lut_over_chain_by_kind"] = {kind: {"median": statistics.median(v), "n": len(v),
                                            "p10": sorted(v)[len(v) // 10], "p90": sorted(v)[9 * len(v) // 10]}
                                     for kind, v in sorted(kind_ratio.items())}
    out["whole_minus_nodes_ms_median"] = statistics.median(r["whole_minus_nodes_ms"] for r in rows)
    for key, value in out.items():
        print(f"{key}: {value}")
    write_json(args.out, {"schema": "mdp.bench_latency_error_budget", "version": 1,
                          "provenance": provenance(**vars(args)), **out, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
