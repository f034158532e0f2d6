"""Where does a ViT latency table's error come from? A decomposition, measured (issue 16, docs/latency.md §1).

For one ViT (default DeiT-S @ 224 px) and N pruned configurations (the calibration's generator: widths from
90 % down to 15 %, some branches removed), the product's own stages profile a fresh LUT, then each
configuration's exported network is measured four ways, every value as a **fraction of dense** (the dense
network measured the same way, in the same rounds):

- ``table``: the sum of the interpolated table entries the solver would use (qk + vproj + sdpa + mlp per
  block, stem, head);
- ``exact``: every kept branch timed alone *at its exact sizes* (``vit_attn``, ``vit_mlp``, as a chain of copies
  like the profiler's rows; the stem and head alone): ``table`` vs ``exact`` is the interpolation over
  the measured sub-grid and the qk/vproj/sdpa split, plus whatever the machine changed since profiling;
- ``in_chain``: every branch, the stem and the head timed *inside* the real forward pass (a clock around each
  module by forward hooks): ``exact`` vs ``in_chain`` is the error of timing a branch alone;
- ``hooked`` / ``whole``: the network's own time with the hooks and without: ``in_chain`` vs ``hooked`` is what
  no unit covers (the containers' dispatch between branches), ``hooked`` vs ``whole`` the hooks' own cost.

``exact``, ``in_chain`` and ``whole`` are timed in one round-robin (one phase), so their comparisons see the
machine in one state. All on 1 thread with the thread CPU clock, heap fixed (``latency/allocator.py``). Writes JSON with the
per-configuration rows and per-stage errors. Random-init weights (latency does not depend on them).

    python scripts/latency_error_budget_vit.py --configs 10 --seed 0 --out budget_deit_small_224px.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mdp_cli import pipeline  # noqa: E402
from mdp_cli.artifacts import provenance, write_json  # noqa: E402
from mdp_cli.latency.calibration import fraction_errors, random_configurations  # noqa: E402
from mdp_cli.latency.engine import Measurement, build_item  # noqa: E402
from mdp_cli.latency.timing import cpu_clock, sample_calls_round_robin, threads  # noqa: E402
from mdp_cli.latency.vit_plan import vit_measurements  # noqa: E402
from mdp_cli.latency.vit_tables import lut_sizes  # noqa: E402
from mdp_cli.modules.vit import AttentionBranch, MlpBranch, PatchStem, TokenHead  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_bench_common import abs_summary  # noqa: E402

HIGH_PRUNING = 0.4


def branch_sizes(problem, config) -> dict[str, dict[str, int]]:
    """Kept unit -> its exact sizes by role: ``blocks.i.attn`` (embed, heads, qk, v), ``blocks.i.mlp``
    (embed, hidden), ``stem`` / ``head`` (embed)."""
    size = {d.name: d.options[config.choice.get(d.name, d.full_index)] for d in problem.dims}
    out = {"stem": {"embed": size["embed"]}, "head": {"embed": size["embed"]}}
    for d in problem.dims:
        if d.name.endswith(".attn.heads") or d.name.endswith(".mlp.hidden"):
            unit = d.name.rsplit(".", 1)[0]
            if not config.kept.get(unit, True):
                continue
            if unit.endswith(".attn"):
                out[unit] = {"embed": size["embed"], "heads": size[unit + ".heads"], "qk": size[unit + ".qk"],
                             "v": size[unit + ".v"]}
            else:
                out[unit] = {"embed": size["embed"], "hidden": size[unit + ".hidden"]}
    return out


def table_by_unit(problem, config) -> dict[str, float]:
    """Kept unit -> the sum of its terms' table entries (ms)."""
    choice = {d.name: int(config.choice.get(d.name, d.full_index)) for d in problem.dims}
    out: dict[str, float] = {}
    for term in problem.terms:
        if term.block is not None and not config.kept.get(term.block, True):
            continue
        unit = term.block or term.name
        out[unit] = out.get(unit, 0.0) + float(term.table[tuple(choice[d] for d in term.dims)])
    return out


def exact_measurement(space, unit: str, sizes: dict[str, int], copies: dict[str, int]) -> Measurement:
    """The unit at its exact sizes as the profiler would time it (same context; ``copies``: the chain length the
    profiler uses per op; the stem and head once, as the profiler does)."""
    by_op = {t.op: t for t in space.terms}
    if unit in ("stem", "head"):
        op, row, n = "vit_" + unit, {"embed": sizes["embed"]}, 1
    elif unit.endswith(".attn"):
        op, row, n = "vit_attn", dict(sizes), copies["vit_qk"]
    else:
        op, row, n = "vit_mlp", dict(sizes), copies["vit_mlp"]
    return Measurement(op=op, signature=f"exact:{op}", sizes_key=lut_sizes(row),
                       context=by_op["vit_qk" if op == "vit_attn" else op].context, sizes=row, copies=n)


class UnitClock:
    """Forward hooks that time every stem, branch and head of an exported ViT inside its forward pass."""

    def __init__(self, net: torch.nn.Module, names: list[str]):
        self.clock = cpu_clock()
        self.samples: dict[str, list[float]] = {name: [] for name in names}
        self._start: dict[str, float] = {}
        modules = [m for m in net.modules() if isinstance(m, (PatchStem, AttentionBranch, MlpBranch, TokenHead))]
        if len(modules) != len(names):
            raise RuntimeError(f"{len(modules)} units in the network, {len(names)} kept in the configuration")
        for name, module in zip(names, modules):
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = self.clock()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.samples[name].append((self.clock() - self._start[name]) * 1000.0)
        return hook


def unit_order(units: dict[str, dict[str, int]]) -> list[str]:
    """Kept units in forward order: stem, blocks.0.attn, blocks.0.mlp, ..., head."""
    def key(name: str):
        if name == "stem":
            return (-1, 0)
        if name == "head":
            return (10 ** 6, 0)
        parts = name.split(".")
        return (int(parts[1]), 0 if parts[2] == "attn" else 1)
    return sorted(units, key=key)


def summary(errs: list[float], measured_fractions: list[float]) -> dict:
    """``abs_summary`` with a count, over all configurations and over those below HIGH_PRUNING of dense."""
    def stats(values):
        return {"count": len(values), **abs_summary(values)} if values else {"count": 0}
    high = [e for e, f in zip(errs, measured_fractions) if f < HIGH_PRUNING]
    return {"all": stats(errs), "high_pruning": stats(high)}


def time_in_one_phase(family, discovered, problem, configs, units, copies, warmup: int, repeats: int):
    """One round-robin over every configuration's whole network, a hooked copy of it, and every distinct kept
    unit alone at its exact sizes (a chain of copies, as the profiler times rows), so that all of them see the
    machine in one state. Returns per configuration the whole and hooked medians and the exact and in-chain
    medians of each kept unit (ms)."""
    per_config = [{unit: exact_measurement(discovered.space, unit, sizes, copies) for unit, sizes in u.items()}
                  for u in units]
    wanted = {m.key: m for measured in per_config for m in measured.values()}  # each distinct shape timed once
    x = torch.randn(1, *family.input_shape(discovered))
    calls, clocks = [], []
    for c, u in zip(configs, units):
        sizes = {d.name: d.options[c.choice[d.name]] for d in problem.dims if d.name in c.choice}
        plain = family.export_for_timing(discovered, sizes, dict(c.kept)).eval()
        hooked = family.export_for_timing(discovered, sizes, dict(c.kept)).eval()
        clocks.append(UnitClock(hooked, unit_order(u)))
        calls += [lambda n=plain: n(x), lambda n=hooked: n(x)]
    for measurement in wanted.values():
        module, example = build_item(measurement, 1)
        calls.append(lambda m=module.eval(), e=example: m(e))
    t0 = time.perf_counter()
    with threads(1):
        samples = sample_calls_round_robin(calls, "cpu", warmup, repeats)
    print(f"timed {len(configs)} networks (plain and hooked) and {len(wanted)} exact units in turns "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    n = len(configs)
    whole = [statistics.median(s) for s in samples[0:2 * n:2]]
    hooked = [statistics.median(s) for s in samples[1:2 * n:2]]
    exact_ms = {key: statistics.median(s) / m.copies for (key, m), s in zip(wanted.items(), samples[2 * n:])}
    exact = [{unit: exact_ms[m.key] for unit, m in measured.items()} for measured in per_config]
    in_chain = [{name: statistics.median(s[warmup:]) for name, s in clk.samples.items()} for clk in clocks]
    return whole, hooked, exact, in_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="latency_error_budget_vit.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="mdp-error-budget-vit-") as tmp:
        cfg = pipeline.load_config(None, {"model": args.model, "resolution": args.resolution, "random_init": True,
                                          "profile": {"warmup": args.warmup, "repeats": args.repeats,
                                                      "lut_dir": str(Path(tmp) / "luts")}})
        family = pipeline.family_of_config(cfg)
        discovered = pipeline.discover(cfg)
        t0 = time.perf_counter()
        pipeline.stage_profile(cfg, discovered, progress=False)
        print(f"profiled in {time.perf_counter() - t0:.0f} s", flush=True)
        lut = pipeline.open_lut(cfg)
        problem = family.build_problem(cfg, discovered, lut, None, None)
        configs = random_configurations(problem, args.configs, seed=args.seed)
        units = [branch_sizes(problem, c) for c in configs]
        tables = [table_by_unit(problem, c) for c in configs]

        copies = {m.op: m.copies for m in vit_measurements(discovered.space)}
        whole, hooked, exact, in_chain = time_in_one_phase(family, discovered, problem, configs, units, copies,
                                                              args.warmup, args.repeats)

    rows = []
    for k, c in enumerate(configs):
        rows.append({"kept": dict(c.kept), "choice": dict(c.choice), "whole_ms": whole[k], "hooked_ms": hooked[k],
                     "table_ms": sum(tables[k].values()) + problem.constant_latency,
                     "exact_ms": sum(exact[k].values()) + problem.constant_latency,
                     "in_chain_ms": sum(in_chain[k].values()),
                     "units": {u: {"table": tables[k][u], "exact": exact[k][u], "in_chain": in_chain[k][u]}
                               for u in units[k]}})
    measured = [r["whole_ms"] for r in rows]
    mf = [m / measured[0] for m in measured[1:]]
    stages = {
        "table_vs_whole": fraction_errors([r["table_ms"] for r in rows], measured),
        "table_vs_exact": fraction_errors([r["table_ms"] for r in rows], [r["exact_ms"] for r in rows]),
        "exact_vs_in_chain": fraction_errors([r["exact_ms"] for r in rows], [r["in_chain_ms"] for r in rows]),
        "in_chain_vs_hooked": fraction_errors([r["in_chain_ms"] for r in rows], [r["hooked_ms"] for r in rows]),
        "hooked_vs_whole": fraction_errors([r["hooked_ms"] for r in rows], measured),
    }
    report = {name: summary(e, mf) for name, e in stages.items()}
    # per unit kind: the table entry, the exact alone timing and the in-chain cost (ms, all configurations)
    kinds: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for unit, v in r["units"].items():
            kind = unit if unit in ("stem", "head") else unit.rsplit(".", 1)[1]
            d = kinds.setdefault(kind, {"table/exact": [], "exact/in_chain": [], "in_chain - exact ms": []})
            d["table/exact"].append(v["table"] / v["exact"])
            d["exact/in_chain"].append(v["exact"] / v["in_chain"])
            d["in_chain - exact ms"].append(v["in_chain"] - v["exact"])
    per_kind = {k: {name: statistics.median(vals) for name, vals in d.items()} for k, d in kinds.items()}
    print(f"\n{args.model} @ {args.resolution}px, {len(rows) - 1} configurations, dense {measured[0]:.1f} ms; "
          f"fractions of dense {min(mf):.2f}-{max(mf):.2f}")
    for name, s in report.items():
        a = s["all"]
        print(f"  {name:20s} median {a['median']:.1%} worst {a['worst']:.1%} signed {a['mean_signed']:+.1%}")
    for k, d in per_kind.items():
        print(f"  {k:6s} " + "  ".join(f"{n} {v:.3f}" for n, v in d.items()))
    write_json(args.out, {"schema": "mdp.bench_latency_error_budget_vit", "version": 1,
                          "provenance": provenance(**vars(args), profile_plan=repr(family.timing)), "stages": report, "per_kind": per_kind,
                          "constant_ms": problem.constant_latency, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
