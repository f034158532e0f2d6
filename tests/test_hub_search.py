"""The hub search's branch and bound (bucket-elimination bounds over the hub dims, lazily enumerated
blocks) against enumeration and the monolithic MILP."""

import time

import numpy as np
import pytest

from random_problems import random_problem
from mdp_cli.solve import minimum_latency, solve_problem
from mdp_cli.solve.brute import brute_force
from mdp_cli.solve.synthetic import resnet_problem


def _budget(problem, seed):
    rng = np.random.default_rng(20_000 + seed)
    lowest = minimum_latency(problem)
    return lowest + rng.uniform(0.05, 0.95) * (problem.dense_latency - lowest)


@pytest.mark.parametrize("seed", range(40))
def test_lazily_enumerated_blocks_match_brute_force(seed, monkeypatch):
    """Every block enumerated lazily (its bound table by eliminating its private dims, its front built
    only at the interface values the search reaches) and every hub searched by branch and bound."""
    import mdp_cli.solve.decompose as decompose

    problem = random_problem(seed, max_dims=5)
    budget = _budget(problem, seed)
    reference, _, _ = brute_force(problem, budget)
    eager = solve_problem(problem, f"{budget!r}ms", formulation="hub")
    monkeypatch.setattr(decompose, "MAX_ENUMERATED_CELLS", 1)
    monkeypatch.setattr(decompose, "EXACT_BOUNDS_UP_TO", 0)
    lazy = solve_problem(problem, f"{budget!r}ms", formulation="hub")
    # the smallest latency comes out of the same elimination (latency only)
    assert minimum_latency(problem) == pytest.approx(problem.latency(*_cheapest(problem)), rel=1e-12)
    for solution in (eager, lazy):
        assert solution.status in ("optimal", "nothing_to_prune")
        assert solution.objective == pytest.approx(reference, rel=1e-9, abs=1e-12)
        assert solution.predicted_latency <= budget


def _cheapest(problem):
    import itertools

    names = [d.name for d in problem.dims]
    removable = [b.name for b in problem.blocks if b.removable]
    best = None
    for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
        for flags in itertools.product((True, False), repeat=len(removable)):
            choice, kept = dict(zip(names, indices)), dict(zip(removable, flags))
            if best is None or problem.latency(choice, kept) < problem.latency(*best):
                best = (choice, kept)
    return best


def test_chain_of_stages_agrees_with_the_milp(monkeypatch):
    """A four-stage bottleneck ResNet (a chain of hub dims, the first block of each stage spanning two)
    at fine steps: the branch and bound, with blocks enumerated up front or lazily, and HiGHS on the
    monolithic MILP reach the same optimum."""
    import mdp_cli.solve.decompose as decompose

    problem = resnet_problem(depths=(1, 2, 2, 1), mids=(16, 16, 32, 32), expansion=2, step=8, resolution=32,
                             batch=8, seed=5)
    lowest = minimum_latency(problem)
    for fraction in (0.15, 0.6):
        budget = f"{lowest + fraction * (problem.dense_latency - lowest)!r}ms"
        milp = solve_problem(problem, budget, formulation="monolithic")
        hub = solve_problem(problem, budget, formulation="hub")
        with monkeypatch.context() as patch:
            patch.setattr(decompose, "MAX_ENUMERATED_CELLS", 64)
            lazy = solve_problem(problem, budget, formulation="hub")
        assert lazy.solver["model_size"]["lazily_enumerated_blocks"] > 0
        for solution in (hub, lazy):
            assert solution.status == milp.status == "optimal"
            assert solution.objective == pytest.approx(milp.objective, rel=1e-9)
            assert solution.predicted_latency <= solution.budget


@pytest.mark.slow
def test_resnet50_at_8_channel_steps_is_solved_by_the_hub_search_like_the_milp():
    """ResNet-50 at 8-channel steps (67 million hub assignments): proven optimal by the branch and bound
    in a few seconds of CPU, the same optimum as HiGHS on the monolithic MILP (~1.5 min)."""
    problem = resnet_problem(step=8, seed=0)
    started = time.process_time()
    hub = solve_problem(problem, 0.5)
    hub_cpu = time.process_time() - started
    assert hub.solver["formulation"] == "hub" and hub.status == "optimal"
    assert hub_cpu < 10.0
    milp = solve_problem(problem, 0.5, formulation="monolithic", time_limit=600)
    assert milp.status == "optimal"
    assert hub.objective == pytest.approx(milp.objective, rel=1e-9)


@pytest.mark.slow
def test_deit_base_at_fine_steps_is_proven_optimal_within_ten_seconds():
    """DeiT-Base at embed=8, qk=v=4, mlp=32: proven optimal by the hub search, each budget under 10 s of CPU,
    and the optimum never decreases with the budget."""
    from mdp_cli.solve.synthetic import vit_problem

    problem = vit_problem(embed_step=8, qk_step=4, v_step=4, mlp_step=32, seed=0)
    values = []
    for budget in (0.3, 0.5, 0.7):
        started = time.process_time()
        solution = solve_problem(problem, budget)
        assert time.process_time() - started < 10.0
        assert solution.status == "optimal" and solution.solver["formulation"] == "hub"
        assert solution.predicted_latency <= solution.budget
        values.append(solution.objective)
    assert values == sorted(values)
