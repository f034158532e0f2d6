#!/usr/bin/env python3
"""Solver benchmark at real problem sizes: model-build time, solve time and gap over several budgets.

Problems (synthetic tables with the exact structure of each network, see mdp_cli/solve/synthetic.py):
- resnet50-paper:  ResNet-50 at the official code's granularity (32-128-channel chunks, 2-16 options/dim)
- resnet50-fine:   ResNet-50 at 32-channel chunks (up to 64 options per dim)
- deit_base:       DeiT-Base, E in 16-channel chunks, 12 heads, Q/V in 8-column chunks, MLP in 64-neuron
                   chunks, attention and MLP branches removable, E shared by all blocks

    python scripts/bench_solve.py                       # all problems, budgets 0.7 0.5 0.3
    python scripts/bench_solve.py --problems deit_base --budgets 0.5 --formulation hull
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp_cli.solve import solve_problem  # noqa: E402
from mdp_cli.solve.solver import FORMULATIONS  # noqa: E402
from mdp_cli.solve.synthetic import resnet_problem, vit_problem  # noqa: E402

PROBLEMS = {
    "resnet50-paper": lambda seed: resnet_problem(paper_granularity=True, seed=seed),
    "resnet50-fine": lambda seed: resnet_problem(step=32, seed=seed),
    "deit_base": lambda seed: vit_problem(seed=seed),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--formulation", default="auto", choices=FORMULATIONS)
    parser.add_argument("--knapsack", default="dp", choices=["dp", "highs"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args()

    rows = []
    for name in args.problems:
        for seed in args.seeds:
            started = time.perf_counter()
            problem = PROBLEMS[name](seed)
            generate_s = time.perf_counter() - started
            for budget in args.budgets:
                solution = solve_problem(problem, budget, time_limit=args.time_limit, formulation=args.formulation,
                                         knapsack=args.knapsack)
                size = solution.solver.get("model_size", {})
                rows.append({
                    "problem": name, "seed": seed, "budget": budget,
                    "dims": len(problem.dims), "formulation": solution.solver.get("formulation"),
                    "size": size.get("hub_assignments", size.get("joint_variables")),
                    "status": solution.status, "gap": solution.gap,
                    "build_s": round(solution.timings.get("build_s", 0.0), 2),
                    "solve_s": round(solution.timings.get("solve_s", 0.0), 2),
                    "latency_ratio": round(solution.latency_ratio, 4),
                    "generate_s": round(generate_s, 2),
                })
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    if args.markdown:
        args.markdown.write_text(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
