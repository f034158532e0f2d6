"""The MILP's optimum equals exhaustive enumeration, and what it reports recomputes exactly."""

import numpy as np
import pytest

from random_problems import random_problem
from mdp_cli.solve import minimum_latency, solve_problem
from mdp_cli.solve.brute import brute_force
from mdp_cli.solve.formulation import build_formulation
from mdp_cli.solve.linear import linearize

SEEDS = range(60)


def _budget_between_min_and_dense(problem, seed, blocks=True, latency_problem=None):
    rng = np.random.default_rng(10_000 + seed)
    lowest = minimum_latency(problem, latency_problem, blocks)
    dense = (latency_problem or problem).dense_latency
    return lowest + rng.uniform(0.05, 0.95) * (dense - lowest)


@pytest.mark.parametrize("formulation", ["monolithic", "hub"])
@pytest.mark.parametrize("seed", SEEDS)
def test_optimum_matches_brute_force(seed, formulation):
    problem = random_problem(seed)
    budget = _budget_between_min_and_dense(problem, seed)
    reference_value, _, _ = brute_force(problem, budget)
    solution = solve_problem(problem, f"{budget!r}ms", formulation=formulation)
    assert solution.status == "nothing_to_prune" or solution.solver["formulation"] == formulation
    assert solution.status in ("optimal", "nothing_to_prune")
    assert solution.objective == pytest.approx(reference_value, rel=1e-7, abs=1e-9)
    # Reported numbers recompute exactly from the chosen options, and the budget holds exactly.
    index = solution.option_index
    assert solution.predicted_latency == problem.latency(index, solution.kept)
    assert solution.objective == problem.objective(index, solution.kept)
    assert solution.predicted_latency <= budget
    assert all(solution.choice[d.name] == d.options[index[d.name]] for d in problem.dims)


@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_block_enumeration_matches_brute_force(seed):
    """The monolithic MILP with per-block Pareto enumeration is an exact alternative formulation too."""
    problem = random_problem(seed)
    budget = _budget_between_min_and_dense(problem, seed)
    reference_value, _, _ = brute_force(problem, budget)
    solution = solve_problem(problem, f"{budget!r}ms", formulation="blocks")
    assert solution.objective == pytest.approx(reference_value, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_vit_structure_hub_and_monolithic_agree_with_brute_force(seed):
    """A two-block ViT (E shared, heads/qk/v/mlp private, 3-dim tables, removable branches)."""
    from mdp_cli.solve.synthetic import vit_problem

    problem = vit_problem(depth=2, embed=48, heads=2, head_dim=16, mlp=64, embed_step=16, qk_step=8, v_step=8,
                          mlp_step=32, tokens=17, batch=8, seed=seed)
    for fraction in (0.35, 0.7):
        budget = fraction * problem.dense_latency
        reference_value, _, _ = brute_force(problem, budget)
        for formulation in ("hub", "monolithic"):
            solution = solve_problem(problem, fraction, formulation=formulation)
            assert solution.objective == pytest.approx(reference_value, rel=1e-9)
            assert solution.predicted_latency <= budget


@pytest.mark.parametrize("seed", range(0, 60, 4))
def test_no_blocks_matches_brute_force_without_removal(seed):
    problem = random_problem(seed)
    budget = _budget_between_min_and_dense(problem, seed, blocks=False)
    reference_value, _, _ = brute_force(problem, budget, blocks=False)
    solution = solve_problem(problem, f"{budget!r}ms", blocks=False)
    assert all(solution.kept.values())
    assert solution.objective == pytest.approx(reference_value, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("seed", range(0, 60, 4))
def test_linear_mode_optimises_the_linear_model_and_reports_true_latency(seed):
    problem = random_problem(seed)
    linear = linearize(problem)
    budget = _budget_between_min_and_dense(problem, seed, latency_problem=linear)
    reference_value, _, _ = brute_force(problem, budget, latency_problem=linear)
    solution = solve_problem(problem, f"{budget!r}ms", latency_model="linear")
    assert solution.objective == pytest.approx(reference_value, rel=1e-7, abs=1e-9)
    assert solution.linear_latency == pytest.approx(linear.latency(solution.option_index, solution.kept))
    assert solution.linear_latency <= budget * (1 + 1e-9)
    # The reported latency is the true (table) latency, which the linear model may under-estimate.
    assert solution.predicted_latency == problem.latency(solution.option_index, solution.kept)


def test_linear_model_is_exact_at_dense_and_for_single_dim_changes():
    problem = random_problem(3, max_term_dims=2)
    linear = linearize(problem)
    dense = problem.dense_choice()
    assert linear.latency(dense) == pytest.approx(problem.latency(dense))
    for dim in problem.dims:
        choice = dict(dense, **{dim.name: 0})
        assert linear.latency(choice) == pytest.approx(problem.latency(choice))


def test_minimum_latency_matches_brute_force():
    for seed in range(10):
        problem = random_problem(seed)
        lowest = min(
            problem.latency(dict(zip([d.name for d in problem.dims], idx)), dict(zip(r, flags)))
            for idx in __import__("itertools").product(*(range(len(d.options)) for d in problem.dims))
            for r in [[b.name for b in problem.blocks if b.removable]]
            for flags in __import__("itertools").product((True, False), repeat=len(r))
        )
        assert minimum_latency(problem) == pytest.approx(lowest, rel=1e-9)


def test_time_limited_search_reports_incumbent_and_gap():
    from mdp_cli.solve.synthetic import resnet_problem

    problem = resnet_problem(step=32, seed=1)
    solution = solve_problem(problem, 0.4, time_limit=0.5, formulation="monolithic")
    assert solution.predicted_latency <= solution.budget
    assert solution.status in ("optimal", "time_limit")
    assert solution.status == "time_limit"  # 0.5 s cannot prove this one
    # The incumbent (HiGHS's or the greedy fallback) is reported with HiGHS's bound when it has one.
    assert solution.objective > 0
    if solution.gap is not None:
        assert solution.gap >= 0 and solution.bound >= solution.objective - 1e-9


def test_formulation_is_linear_and_small_for_gated_three_dim_terms():
    problem = random_problem(5)
    form = build_formulation(problem)
    assert form.stats["binaries"] == sum(len(d.options) for d in problem.dims) + sum(b.removable for b in problem.blocks)


@pytest.mark.parametrize("seed", range(0, 60, 2))
def test_hub_search_with_lagrangian_bounds_and_highs_knapsacks(seed, monkeypatch):
    """Large-hub path (vectorised Lagrangian bounds, lazily tightened) and the HiGHS knapsack engine."""
    import mdp_cli.solve.decompose as decompose

    monkeypatch.setattr(decompose, "EXACT_BOUNDS_UP_TO", 0)
    problem = random_problem(seed)
    budget = _budget_between_min_and_dense(problem, seed)
    reference_value, _, _ = brute_force(problem, budget)
    for engine in ("dp", "highs"):
        solution = solve_problem(problem, f"{budget!r}ms", formulation="hub", knapsack=engine)
        assert solution.objective == pytest.approx(reference_value, rel=1e-7, abs=1e-9)
        assert solution.predicted_latency <= budget


@pytest.mark.parametrize("budget", [0.8, 0.55, 0.35])
def test_hub_and_monolithic_agree_on_a_resnet_shaped_problem(budget):
    from mdp_cli.solve.synthetic import resnet_problem

    problem = resnet_problem(depths=(2, 2), mids=(64, 128), step=32, resolution=64, batch=64, seed=3)
    hub = solve_problem(problem, budget, formulation="hub")
    monolithic = solve_problem(problem, budget, formulation="monolithic")
    assert hub.status == monolithic.status == "optimal"
    assert hub.objective == pytest.approx(monolithic.objective, rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_chain_with_fixed_blocks_decomposes_and_matches_brute_force(seed):
    """An inverted-residual chain: the first block of each stage and the head are fixed (ungated), so
    their private widths join fixed pseudo-blocks rather than the hub; hub and monolithic agree with
    enumeration."""
    import math

    from mdp_cli.solve.decompose import analyse
    from mdp_cli.solve.synthetic import mobilenet_problem

    problem = mobilenet_problem(stages=((1, 8, 1, 1), (2, 16, 2, 2), (2, 16, 1, 1)), stem=8, last=16,
                                paper_granularity=False, step=8, resolution=32, batch=8, seed=seed)
    assert math.prod(len(d.options) for d in problem.dims) * 2 ** len(problem.blocks) < 50_000
    structure = analyse(problem, problem, True)
    assert structure is not None and any(g.name.startswith("<fixed") for g in structure.groups)
    assert "head" not in structure.hub
    lowest = minimum_latency(problem)
    for fraction in (0.1, 0.4, 0.8):
        budget = lowest + fraction * (problem.dense_latency - lowest)
        reference_value, _, _ = brute_force(problem, budget)
        for formulation in ("hub", "monolithic"):
            solution = solve_problem(problem, f"{budget!r}ms", formulation=formulation)
            assert solution.objective == pytest.approx(reference_value, rel=1e-9)
            assert solution.predicted_latency <= solution.budget
