"""ViT latency model: table construction (exact on synthetic costs) and prediction vs measurement (CPU)."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest
import torch

from mdp_cli.export.vit import export_vit
from mdp_cli.latency.ops import get_op
from mdp_cli.latency.timing import measure_in_turns
from mdp_cli.latency.vit_plan import points, profile_vit, subgrid
from mdp_cli.latency.vit_tables import linear_tables, predict_latency, unique_terms, vit_tables
from mdp_cli.models import create_model
from mdp_cli.space.vit import build_vit_space, vit_problem


def kernel_cost(H, Q, V):  # linear in H, not additive in Q and V: padding to max(Q, V), a tiling step at 32
    width = max(Q, V)
    return 1e-3 * H * (2 * width + (0.05 if width % 32 else 0.0)) + 2e-4 * H * abs(Q - V) + 0.01


def attn_cost(E, H, Q, V):  # projections multilinear and additive in Q and V, plus the kernel
    return 1e-4 * E * H * (2 * Q + V) + 2e-3 * E + 0.1 + kernel_cost(H, Q, V)


def synthetic_lut(space, grid):
    rows = []
    for sig, term in unique_terms(space).items():
        for sizes in points(space, term, grid):
            s = dict(sizes)
            if term.op == "vit_qk":
                s["v"] = term.context["v_ref"]
                ms = attn_cost(s["embed"], s["heads"], s["qk"], s["v"])
            elif term.op == "vit_vproj":
                s["qk"] = term.context["qk_ref"]
                ms = attn_cost(s["embed"], s["heads"], s["qk"], s["v"])
            elif term.op == "vit_sdpa":  # the kernel between the two linears, alone
                ms = kernel_cost(s["heads"], s["qk"], s["v"])
            elif term.op == "vit_mlp":
                ms = 2e-5 * s["embed"] * s["hidden"] + 0.05
            else:
                ms = 1e-3 * s["embed"] + 0.2
            rows.append({"op": term.op, "signature": sig, **s, "ms": ms})
    return {"rows": rows, "provenance": {}}


def test_subgrid():
    assert subgrid(range(1, 13), 4) == [1, 5, 8, 12]
    assert subgrid([8, 16], 5) == [8, 16]


def test_tables_recover_additive_multilinear_costs(tmp_path):
    space = build_vit_space(create_model("deit_tiny", img_size=32), "deit_tiny")
    lut = synthetic_lut(space, {"embed": 3, "heads": 2, "qk": 2, "v": 2, "hidden": 3})
    tables = vit_tables(space, lut)
    assert tables["blocks.0.attn.qk"].shape == (12, 3, 8) and tables["blocks.5.mlp"].shape == (12, 12)
    assert tables["blocks.0.attn.sdpa"].shape == (3, 8, 8)
    # the kernel is measured on every (Q, V) pair (sub-grid only over the heads)
    sdpa_rows = [r for r in lut["rows"] if r["op"] == "vit_sdpa"]
    assert len(sdpa_rows) == 2 * 8 * 8 and {r["heads"] for r in sdpa_rows} == {1, 3}
    assert all((t >= 0).all() for t in tables.values())
    rng = random.Random(0)
    for _ in range(20):
        choice = {d.name: rng.choice(d.options) for d in space.dims}
        kept = {b.name: rng.random() > 0.3 for b in space.blocks}
        E = choice["embed"]
        expected = 2 * (1e-3 * E + 0.2)
        for i in range(12):
            p = f"blocks.{i}."
            if kept[p + "attn"]:
                expected += attn_cost(E, choice[p + "attn.heads"], choice[p + "attn.qk"], choice[p + "attn.v"])
            if kept[p + "mlp"]:
                expected += 2e-5 * E * choice[p + "mlp.hidden"] + 0.05
        assert predict_latency(space, tables, choice, kept) == pytest.approx(expected, rel=1e-9)


def test_op_builders_run_the_export_modules():
    space = build_vit_space(create_model("deit_tiny_distilled", img_size=32), "t")
    for term in unique_terms(space).values():
        sizes = {role: space.dim(d).options[1] for d, role in zip(term.dims, term.roles)}
        module, x = get_op(term.op)(term.context, sizes, 2)
        with torch.no_grad():
            y = module(x)
        assert y.shape[0] == 2


def test_predicted_vs_measured_deit_tiny_cpu():
    """deit_tiny (96 px, 37 tokens, batch 1, 1 thread): predicted speed-up over the dense model vs the
    measured one (each configuration timed alternately with the dense model). Tolerance 35 % median /
    60 % worst, and better than the linear per-dim model: on this shared 2-core machine a single
    alternating ratio varies ±6 % and a profiled row 10-20 % under load, and one profiling run can be
    biased as a whole (median 5 % in one run, 22 % in the next, same code); the precision figures come
    from scripts/bench_latency_model_vit.py at real size."""
    torch.set_num_threads(1)
    model = create_model("deit_tiny", img_size=96)
    space = build_vit_space(model, "deit_tiny")
    dense, _ = export_vit(model, {})
    x = torch.randn(1, 3, 96, 96)
    # A profile biased as a whole (seen once in a full CI suite: every error 10-18 %, the linear model's
    # 5-33 %, where the same code gives 1-5 % and 17-43 % alone) is measured again, once, from scratch;
    # two such profiles in a row fail.
    for attempt in range(2):
        lut = profile_vit(space, grid={"embed": 3, "heads": 3, "qk": 2, "v": 2, "hidden": 3}, warmup=5, samples=30)
        tables = vit_tables(space, lut)
        linear = linear_tables(space, tables)
        problem_dense = predict_latency(space, tables, {})
        linear_dense = predict_latency(space, linear, {})
        rng = random.Random(0)
        errors, linear_errors = [], []
        for _ in range(6):
            choice = {d.name: rng.choice(d.options) for d in space.dims}
            kept = {b.name: rng.random() > 0.15 for b in space.blocks}
            pruned, _ = export_vit(model, choice, kept)
            ms, ms_dense = measure_in_turns(pruned, x, dense, x, warmup=5, samples=30)
            predicted = predict_latency(space, tables, choice, kept)
            errors.append(abs((predicted / problem_dense) / (ms / ms_dense) - 1))
            linear_errors.append(abs((predict_latency(space, linear, choice, kept) / linear_dense) / (ms / ms_dense) - 1))
        print("speed-up errors", [round(e, 3) for e in errors], "linear", [round(e, 3) for e in linear_errors])
        if statistics.median(errors) < min(0.35, statistics.median(linear_errors)) and max(errors) < 0.6:
            break
    assert statistics.median(errors) < 0.35, errors
    assert max(errors) < 0.6, errors
    assert statistics.median(errors) < statistics.median(linear_errors), (errors, linear_errors)
    # the measured tables also make a valid solver problem
    imp = {"dims": {d.name: {"options": list(d.options), "cumulative": list(np.arange(1.0, len(d.options) + 1))}
                    for d in space.dims}}
    problem = vit_problem(space, tables, imp)
    assert problem.dense_latency == pytest.approx(problem_dense)
