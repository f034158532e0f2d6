#!/usr/bin/env python3
"""Solver benchmark at real problem sizes: build, search and whole-process time over several budgets.

Problems (synthetic tables with the exact structure of each network, see mdp_cli/solve/synthetic.py):
- resnet50-paper:    ResNet-50 at the official code's granularity (32-128-channel chunks, 2-16 options/dim)
- resnet101-paper:   ResNet-101 (4 stages, 33 blocks) at the same granularity
- mobilenetv2-paper: MobileNetV2 (an inverted-residual chain: 7 stage dims, 17 blocks), size/16 chunks
- deit_base:         DeiT-Base, E in 16-channel chunks, 12 heads, Q/V in 8-column chunks, MLP in 64-neuron
                     chunks, attention and MLP branches removable, E shared by all blocks
- resnet50-fine8:    ResNet-50 at 8-channel steps (up to 256 options per dim)
- deit_base-fine:    DeiT-Base at embed=8, qk=v=4, mlp=32
- resnet50-paper-counts, deit_base-counts: the same with params/FLOPs counts, for ``--max-params F`` and
  ``--max-flops F`` (fractions of the dense model's counts), ``--min-keep``, ``--multiple``

Columns: ``build_s`` (hub structure or Pyomo model) and ``search_s`` inside one process (wall), ``cpu_s``
the CPU time of that solve (``time.process_time``: on a shared machine the number to compare);
``process_s`` and ``process_cpu_s``: a whole ``python -m mdp_cli solve PROBLEM --budget B`` (start-up,
reading the problem, solving, printing; wall and CPU of the child); start-up: ``python -m mdp_cli solve
--help`` (imports only), CPU. ``--json PATH`` writes the rows, the start-up and the load average.
Run it on a quiet machine with one thread (``OMP_NUM_THREADS=1``): timings under load mean little.

    python scripts/bench_solve.py                                  # paper-granularity problems
    python scripts/bench_solve.py --problems resnet50-fine8 deit_base-fine --budgets 0.5
    python scripts/bench_solve.py --problems deit_base --budgets 0.5 --formulation monolithic --no-process
    python scripts/bench_solve.py --problems resnet50-paper-counts --max-params 0.4 --min-keep 0.25 --multiple 8
    python scripts/bench_solve.py --problems resnet50-paper-counts --max-params 0.4 --max-flops 0.5 --no-process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdp_cli.solve import solve_problem  # noqa: E402
from mdp_cli.solve.solver import solve_budgets  # noqa: E402
from mdp_cli.solve.solver import FORMULATIONS  # noqa: E402
from mdp_cli.solve.synthetic import mobilenet_problem, resnet_problem, vit_problem  # noqa: E402

RESNET101 = dict(depths=(3, 4, 23, 3), name="resnet101")
PROBLEMS = {
    "resnet50-paper": lambda seed: resnet_problem(paper_granularity=True, seed=seed),
    "resnet101-paper": lambda seed: resnet_problem(paper_granularity=True, seed=seed, **RESNET101),
    "mobilenetv2-paper": lambda seed: mobilenet_problem(seed=seed),
    "deit_base": lambda seed: vit_problem(seed=seed),
    "resnet50-fine8": lambda seed: resnet_problem(step=8, seed=seed),
    "deit_base-fine": lambda seed: vit_problem(embed_step=8, qk_step=4, v_step=4, mlp_step=32, seed=seed),
    # with params/FLOPs counts, for --max-params / --min-keep / --multiple
    "resnet50-paper-counts": lambda seed: resnet_problem(paper_granularity=True, seed=seed, counts=True),
    "deit_base-counts": lambda seed: vit_problem(seed=seed, counts=True),
}
DEFAULT_PROBLEMS = ["resnet50-paper", "resnet101-paper", "mobilenetv2-paper", "deit_base"]


def _child_run(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + system of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=DEFAULT_PROBLEMS, choices=list(PROBLEMS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--formulation", default="auto", choices=FORMULATIONS)
    parser.add_argument("--knapsack", default="dp", choices=["dp", "highs"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process (CLI) timings")
    parser.add_argument("--max-params", type=float, help="cap params at this fraction of the dense model's "
                        "(problems with counts only)")
    parser.add_argument("--max-flops", type=float, help="cap FLOPs at this fraction of the dense model's "
                        "(problems with counts only)")
    parser.add_argument("--min-keep", type=float, help="keep at least this fraction of every dim")
    parser.add_argument("--multiple", type=int, help="widths multiples of this")
    parser.add_argument("--pareto", type=int, default=0, metavar="N",
                        help="also time a sweep of N budgets from 0.3 to 0.9 (solve_budgets in process, and a "
                             "whole 'mdp pareto' process) against one solve at 0.5")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="also write rows, start-up and load average as JSON here")
    args = parser.parse_args()

    startup = None
    if not args.no_process:
        runs = [_child_run([sys.executable, "-m", "mdp_cli", "solve", "--help"])[:2] for _ in range(3)]
        startup = statistics.median(cpu for _, cpu in runs)
        print(f"start-up (mdp solve --help): median {statistics.median(w for w, _ in runs):.3f} s wall, "
              f"{startup:.3f} s CPU", flush=True)

    rows, sweeps = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.problems:
            for seed in args.seeds:
                started = time.perf_counter()
                problem = PROBLEMS[name](seed)
                generate_s = time.perf_counter() - started
                path = Path(scratch) / f"{name}-{seed}.json"
                if not args.no_process:
                    problem.save(path)
                limits = {"min_keep": args.min_keep, "multiple": args.multiple}
                if args.max_params is not None:
                    limits["max_params"] = args.max_params * problem.resource("params", problem.dense_choice())
                if args.max_flops is not None:
                    limits["max_flops"] = args.max_flops * problem.resource("flops", problem.dense_choice())
                flags = [f"--{k.replace('_', '-')}={v!r}" for k, v in limits.items() if v is not None]
                for budget in args.budgets:
                    cpu_started = time.process_time()
                    solution = solve_problem(problem, budget, time_limit=args.time_limit,
                                             formulation=args.formulation, knapsack=args.knapsack, **limits)
                    cpu_s = time.process_time() - cpu_started
                    size = solution.solver.get("model_size", {})
                    row = {
                        "problem": name, "seed": seed, "budget": budget,
                        "dims": len(problem.dims), "formulation": solution.solver.get("formulation"),
                        "size": size.get("hub_assignments", size.get("joint_variables")),
                        "status": solution.status, "gap": solution.gap,
                        "build_s": round(solution.timings.get("build_s", 0.0), 3),
                        "search_s": round(solution.timings.get("solve_s", 0.0), 3),
                        "cpu_s": round(cpu_s, 3),
                        "objective": solution.objective,
                        "constraints": {k: v for k, v in limits.items() if v is not None} or None,
                        "met_by": solution.solver.get("constraints", {}).get("met_by"),
                        "latency_ratio": round(solution.latency_ratio, 4),
                        "generate_s": round(generate_s, 2),
                    }
                    if not args.no_process:
                        wall, cpu, result = _child_run(
                            [sys.executable, "-m", "mdp_cli", "solve", str(path), "--budget", str(budget),
                             "--formulation", args.formulation, "--knapsack", args.knapsack,
                             "--time-limit", str(args.time_limit), *flags])
                        if result.returncode != 0:
                            raise SystemExit(f"mdp solve failed on {name}: {result.stderr.strip()}")
                        row.update(process_s=round(wall, 3), process_cpu_s=round(cpu, 3))
                    rows.append(row)
                    print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
                if args.pareto:
                    sweeps.append(_time_sweep(name, seed, problem, path, args))
                    print(sweeps[-1], flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    if "process_cpu_s" in table:
        print(f"\nwhole process CPU: median {table.process_cpu_s.median():.3f} s, max {table.process_cpu_s.max():.3f} s"
              f"; start-up {startup:.3f} s CPU; load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv[1:]), "startup_cpu_s": startup, "load_average": os.getloadavg(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows, "sweeps": sweeps}, indent=1, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))


def _time_sweep(name: str, seed: int, problem, path: Path, args: argparse.Namespace) -> dict:
    """CPU seconds of a sweep of ``args.pareto`` budgets against one solve at 0.5: in process (the
    reused model, warm starts) and as whole processes (``mdp pareto`` vs ``mdp solve``)."""
    budgets = [round(0.3 + 0.6 * k / (args.pareto - 1), 4) for k in range(args.pareto)] if args.pareto > 1 else [0.5]
    started = time.process_time()
    solve_problem(problem, 0.5, time_limit=args.time_limit)
    one = time.process_time() - started
    started = time.process_time()
    solutions = solve_budgets(problem, budgets, time_limit=args.time_limit)
    sweep = time.process_time() - started
    assert all(getattr(s, "status", None) == "optimal" for s in solutions), name
    record = {"problem": name, "seed": seed, "budgets": len(budgets), "one_solve_cpu_s": round(one, 3),
              "sweep_cpu_s": round(sweep, 3), "ratio": round(sweep / one, 2)}
    if not args.no_process:
        _, one_cpu, result = _child_run([sys.executable, "-m", "mdp_cli", "solve", str(path), "--budget", "0.5"])
        if result.returncode != 0:
            raise SystemExit(f"mdp solve failed on {name}: {result.stderr.strip()}")
        _, sweep_cpu, result = _child_run([sys.executable, "-m", "mdp_cli", "pareto", str(path),
                                           "--budgets", ",".join(map(str, budgets))])
        if result.returncode != 0:
            raise SystemExit(f"mdp pareto failed on {name}: {result.stderr.strip()}")
        record.update(one_solve_process_cpu_s=round(one_cpu, 3), pareto_process_cpu_s=round(sweep_cpu, 3),
                      process_ratio=round(sweep_cpu / one_cpu, 2))
    return record


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
