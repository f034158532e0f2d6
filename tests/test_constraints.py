"""Constraints beside the budget (params/FLOPs caps, least fraction kept, width multiples): the Pyomo
model with HiGHS against enumeration, and the latency-only paths (DP and Pyomo) agreeing without them."""

import itertools

import numpy as np
import pytest

from random_problems import random_problem
from mdp_cli.errors import InfeasibleBudgetError, MdpError
from mdp_cli.solve import load_problem, minimum_latency, solve_problem
from mdp_cli.solve.constraints import Constraints
from mdp_cli.solve.problem import Term, make_problem


def _with_counts(seed: int):
    """A random problem whose terms also carry params and FLOPs tables (non-negative, same shapes)."""
    problem = random_problem(seed)
    rng = np.random.default_rng(500 + seed)
    terms = [Term(t.name, t.dims, t.table, t.block,
                  {"params": np.round(rng.random(t.table.shape) * 1000), "flops": rng.random(t.table.shape) * 5e6})
             for t in problem.terms]
    return make_problem(problem.dims, problem.importance, terms, problem.blocks, problem.constant_latency,
                        name=problem.name)


def _brute(problem, budget, constraints: Constraints):
    names = [d.name for d in problem.dims]
    removable = [b.name for b in problem.blocks if b.removable]
    best = None
    for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
        choice = dict(zip(names, indices))
        for flags in itertools.product((True, False), repeat=len(removable)):
            kept = dict(zip(removable, flags))
            if problem.latency(choice, kept) > budget or not constraints.satisfied(problem, choice, kept):
                continue
            value = problem.objective(choice, kept)
            best = value if best is None else max(best, value)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_caps_and_option_rules_match_enumeration(seed):
    problem = _with_counts(seed)
    rng = np.random.default_rng(seed)
    lowest = minimum_latency(problem)
    budget = lowest + rng.uniform(0.3, 1.0) * (problem.dense_latency - lowest)
    dense_params = problem.resource("params", problem.dense_choice())
    options = [dict(max_params=0.6 * dense_params), dict(max_flops=0.5 * problem.resource("flops", problem.dense_choice())),
               dict(min_keep=0.5), dict(multiple=2), dict(max_params=0.8 * dense_params, min_keep=0.4)]
    for option in options:
        constraints = Constraints.from_options(**option)
        reference = _brute(problem, budget, constraints)
        if reference is None:
            with pytest.raises(InfeasibleBudgetError):
                solve_problem(problem, f"{budget!r}ms", **option)
            continue
        solution = solve_problem(problem, f"{budget!r}ms", **option)
        assert solution.status == "optimal"
        assert solution.objective == pytest.approx(reference, rel=1e-9, abs=1e-12), option
        assert solution.predicted_latency <= budget
        assert constraints.satisfied(problem, solution.option_index, solution.kept)


@pytest.mark.parametrize("seed", range(24, 32))
def test_caps_with_options_fixed_by_bounds_in_both_milps_match_enumeration(seed, monkeypatch):
    """Caps in the joint MILP and in the one whose removable blocks are choices among their configurations
    (each carrying latency, importance, params and FLOPs), solved by HiGHS with the options the Lagrangian
    bounds rule out fixed (against a target under the dual bound, then from the configuration found) and
    without: all reach the optimum of enumeration."""
    import mdp_cli.solve.solver as solver

    problem = _with_counts(seed)
    rng = np.random.default_rng(seed)
    lowest = minimum_latency(problem)
    budget = lowest + rng.uniform(0.3, 0.9) * (problem.dense_latency - lowest)
    dense = problem.dense_choice()
    option = dict(max_params=0.5 * problem.resource("params", dense), max_flops=0.6 * problem.resource("flops", dense))
    reference = _brute(problem, budget, Constraints.from_options(**option))
    for formulation, fixing, gap in (("monolithic", True, 2e-4), ("monolithic", True, 0.0), ("monolithic", False, 0),
                                     ("blocks", True, 2e-4), ("blocks", False, 0)):
        # (a target on the dual bound itself is never reached: the second round, from a start, always runs)
        monkeypatch.setattr(solver, "LAGRANGIAN_FIXING", fixing)
        monkeypatch.setattr(solver, "FIXING_TARGET_GAP", gap)
        if reference is None:
            with pytest.raises(InfeasibleBudgetError):
                solve_problem(problem, f"{budget!r}ms", formulation=formulation, **option)
            continue
        solution = solve_problem(problem, f"{budget!r}ms", formulation=formulation, **option)
        assert solution.status == "optimal"
        assert solution.objective == pytest.approx(reference, rel=1e-9, abs=1e-12), (formulation, fixing, gap)
        assert solution.predicted_latency <= budget
        assert Constraints.from_options(**option).satisfied(problem, solution.option_index, solution.kept)


def test_options_fixed_by_lagrangian_bounds_are_in_no_better_configuration():
    """fixing.py: against a value reached within the limits (the optimum, and less), the options left
    allowed (and blocks kept or removed as fixed) still hold an optimal configuration, by enumeration.
    Over the seeds the bounds must rule something out (else this checks nothing)."""
    from mdp_cli.solve.fixing import fit_multipliers, fix_by_bounds, hub_for_fixing, lagrangian

    ruled_out = 0
    for seed in range(16):  # (seed 10: a dim that only an ungated importance entry uses)
        problem = _with_counts(seed)
        rng = np.random.default_rng(seed)
        lowest = minimum_latency(problem)
        budget = lowest + rng.uniform(0.3, 0.9) * (problem.dense_latency - lowest)
        dense = problem.dense_choice()
        caps = {"params": 0.6 * problem.resource("params", dense), "flops": 0.7 * problem.resource("flops", dense)}
        owners = {d.name: {t.block for t in problem.terms if d.name in t.dims} |
                  {e.block for e in problem.importance if e.dim == d.name} for d in problem.dims}
        names = [d.name for d in problem.dims]
        removable = [b.name for b in problem.blocks if b.removable]
        fitting = []
        for indices in itertools.product(*(range(len(d.options)) for d in problem.dims)):
            for flags in itertools.product((True, False), repeat=len(removable)):
                choice, kept = dict(zip(names, indices)), dict(zip(removable, flags))
                if problem.latency(choice, kept) <= budget and all(
                        problem.resource(k, choice, kept) <= cap for k, cap in caps.items()):
                    fitting.append((problem.objective(choice, kept), choice, kept))
        if not fitting:
            continue
        values = sorted(v for v, _, _ in fitting)
        structure = hub_for_fixing(problem, tuple(caps))
        limits = np.array([budget] + [caps[name] for name in structure.resources])
        dual, fitted = fit_multipliers(structure, limits)
        assert dual >= values[-1] - 1e-9  # an upper bound on the optimum
        # a subgradient: the dual value elsewhere is above the plane it gives
        value_at, gradient = lagrangian(structure, limits, fitted)
        assert value_at == pytest.approx(dual, rel=1e-12)
        for scale in rng.uniform(0, 3, size=(5, limits.size)):
            other = fitted * scale + rng.uniform(0, 1e-3, limits.size) * values[-1] / limits
            assert lagrangian(structure, limits, other)[0] >= dual + gradient @ (other - fitted) - 1e-9
        for value, weights in itertools.product((values[-1], values[len(values) * 3 // 4]), (None, fitted)):
            fixing = fix_by_bounds(structure, budget, caps, value, weights)
            assert fixing is not None and fixing.root_bound >= values[-1] - 1e-9
            ruled_out += fixing.removed_options(problem) + len(fixing.kept)

            def allowed(choice, kept):
                removed = {b for b, k in kept.items() if not k}
                return all(kept[b] == keep for b, keep in fixing.kept.items()) and all(
                    choice[d] in options for d, options in fixing.allowed.items()
                    if not owners[d] <= removed)  # (a removed block's own dims do not matter)

            assert max(found for found, choice, kept in fitting if allowed(choice, kept)) == values[-1], seed
    assert ruled_out > 0


@pytest.mark.parametrize("exact_bounds_up_to", [16, 0])
@pytest.mark.parametrize("seed", range(12, 24))
def test_hub_decomposition_with_caps_and_rules_matches_enumeration(seed, exact_bounds_up_to, monkeypatch):
    """Rules alone go to the hub search on the problem cut down to the allowed options (by default);
    caps go there when asked (--formulation hub: counts carried per configuration, multi-capacity bounds,
    HiGHS per branch with the incumbent as cutoff). With no exact bounds up front, every hub goes through
    the branch and bound and every branch through its own multi-capacity dual bound."""
    import mdp_cli.solve.decompose as decompose

    monkeypatch.setattr(decompose, "EXACT_BOUNDS_UP_TO", exact_bounds_up_to)
    problem = _with_counts(seed)
    rng = np.random.default_rng(seed)
    lowest = minimum_latency(problem)
    budget = lowest + rng.uniform(0.2, 0.9) * (problem.dense_latency - lowest)
    dense = problem.dense_choice()
    options = [dict(min_keep=0.5, multiple=2), dict(max_params=0.6 * problem.resource("params", dense)),
               dict(max_params=0.8 * problem.resource("params", dense),
                    max_flops=0.6 * problem.resource("flops", dense), min_keep=0.4)]
    for option in options:
        reference = _brute(problem, budget, Constraints.from_options(**option))
        if reference is None:
            with pytest.raises(InfeasibleBudgetError):
                solve_problem(problem, f"{budget!r}ms", formulation="hub", **option)
            continue
        solution = solve_problem(problem, f"{budget!r}ms", formulation="hub", **option)
        assert solution.objective == pytest.approx(reference, rel=1e-9, abs=1e-12), option
        assert solution.predicted_latency <= budget
        assert Constraints.from_options(**option).satisfied(problem, solution.option_index, solution.kept)
        if solution.solver.get("constraints", {}).get("met_by") != "the latency-only optimum":
            assert solution.solver["formulation"] == "hub"


def test_latency_only_dp_and_pyomo_agree_and_a_loose_cap_changes_nothing():
    from mdp_cli.solve.synthetic import resnet_problem

    problem = resnet_problem(depths=(2, 2), mids=(64, 128), step=32, resolution=64, batch=64, seed=3)
    for budget in (0.45, 0.7):
        hub = solve_problem(problem, budget, formulation="hub")
        pyomo = solve_problem(problem, budget, formulation="monolithic")
        assert hub.objective == pytest.approx(pyomo.objective, rel=1e-9)
        # A rule the latency-only optimum already meets: answered without building the MILP.
        loose = solve_problem(problem, budget, min_keep=0.01)
        assert loose.objective == pytest.approx(hub.objective, rel=1e-12)
        assert loose.solver["constraints"]["met_by"] == "the latency-only optimum"


def test_constraint_errors_are_one_line(tmp_path):
    from mdp_cli.solve.synthetic import example_problem

    problem = example_problem()
    for option, text in [(dict(max_params=1e6), "carry no 'params'"), (dict(min_keep=1.5), "min_keep"),
                         (dict(multiple=0), "multiple"), (dict(max_flops="lots"), "max_flops")]:
        with pytest.raises(MdpError, match=text) as info:
            solve_problem(problem, 0.5, **option)
        assert "\n" not in str(info.value)


def test_counts_round_trip_through_the_problem_file(tmp_path):
    problem = _with_counts(1)
    problem.save(tmp_path / "p.json")
    loaded = load_problem(tmp_path / "p.json")
    assert loaded.content_hash() == problem.content_hash()
    choice = loaded.dense_choice()
    assert loaded.resource("params", choice) == problem.resource("params", choice) > 0
    assert Constraints.from_options(max_params="10M").max_params == 1e7


def test_cli_flags(tmp_path):
    import json
    import subprocess
    import sys

    problem = _with_counts(2)
    problem.save(tmp_path / "p.json")
    output = tmp_path / "s.json"
    cap = 0.7 * problem.resource("params", problem.dense_choice())
    result = subprocess.run([sys.executable, "-m", "mdp_cli", "solve", str(tmp_path / "p.json"), "--budget", "0.9",
                             "--max-params", f"{cap!r}", "--min-keep", "0.3", "-o", str(output)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    assert data["solver"]["constraints"]["max_params"] == cap
    assert problem.resource("params", data["option_index"], data["blocks"]) <= cap
