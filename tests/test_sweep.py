"""`mdp solve --sweep`: the budgets of a range, each the same optimum as a separate solve, in one validated
artifact; bad ranges are one-line errors naming --sweep."""

import json

import pytest
from click.testing import CliRunner

from mdp_cli.cli import main
from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.solve import solve_problem
from mdp_cli.solve.cli import example_problem_path
from mdp_cli.solve.problem import load_problem
from mdp_cli.solve.sweep import load_sweep, parse_sweep, save_sweep, solve_sweep


def test_parse_sweep_ranges_include_stop_and_lists_are_sorted():
    assert parse_sweep("0.3:0.9:0.1") == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # decimal: 0.9 is not lost to rounding
    assert parse_sweep("0.2:0.9:0.25") == [0.2, 0.45, 0.7]  # stop off the grid: not added
    assert parse_sweep("0.5:0.5:0.1") == [0.5]
    assert parse_sweep("0.7, 0.3,0.5") == [0.3, 0.5, 0.7]
    assert parse_sweep(0.5) == [0.5] and parse_sweep("1") == [1.0]


@pytest.mark.parametrize("spec, words", [
    ("0.9:0.3:0.1", "stop 0.3 is below start 0.9"),
    ("a:b", "three numbers"),
    ("a:0.5:0.1", "'a' is not a number"),
    ("0.3:0.9:0", "step 0 must be positive"),
    ("0.3:0.9:-0.1", "must be positive"),
    ("0.0:0.5:0.1", "budget 0.0 is not a fraction"),
    ("0.5,1.5", "budget 1.5 is not a fraction"),
    ("0.5,0.5", "listed twice"),
    ("0.1:0.9:0.0001", "at most 200"),
    ("nan,0.5", "not a finite number"),
    ("", "expected start:stop:step"),
])
def test_bad_sweeps_are_one_line_errors_naming_the_flag(spec, words):
    with pytest.raises(MdpError) as info:
        parse_sweep(spec)
    assert str(info.value).startswith(f"--sweep {spec!r}") and words in str(info.value)
    result = CliRunner().invoke(main, ["solve", "--example", "--sweep", spec])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "--sweep" in result.output


def test_sweep_points_are_the_optima_of_separate_solves(tmp_path):
    problem = load_problem(example_problem_path())
    budgets = parse_sweep("0.3:0.9:0.2")
    record = solve_sweep(problem, budgets, "0.3:0.9:0.2")
    assert [p["budget"] for p in record["points"]] == budgets
    assert record["points"][0]["status"] == "infeasible" and "smallest reachable latency" in record["points"][0]["message"]
    for point in record["points"][1:]:
        cold = solve_problem(problem, point["budget"])
        assert point["objective"] == pytest.approx(cold.objective, rel=1e-12)
        index = {d.name: d.options.index(point["choice"][d.name]) for d in problem.dims}
        assert point["predicted_latency"] == pytest.approx(problem.latency(index, point["blocks"]))
        assert point["latency_fraction"] <= point["budget"] + 1e-12
        assert point["importance_fraction"] == pytest.approx(point["objective"] / record["dense_objective"])
    kept = [p["importance_fraction"] for p in record["points"][1:]]
    assert kept == sorted(kept)
    path = tmp_path / "sweep.json"
    save_sweep(path, record, problem="example")
    assert load_sweep(path)["points"] == json.loads(json.dumps(record["points"]))


def test_cli_sweep_writes_beside_the_problem_and_keeps_plain_solve(tmp_path):
    problem = tmp_path / "problem.json"
    problem.write_text(example_problem_path().read_text())
    runner = CliRunner()
    result = runner.invoke(main, ["solve", str(problem), "--sweep", "0.5,0.7"])
    assert result.exit_code == 0, result.output
    data = load_sweep(tmp_path / "sweep.json")
    assert data["spec"] == "0.5,0.7" and data["provenance"]["problem"] == str(problem)
    assert [p["status"] for p in data["points"]] == ["optimal", "optimal"]
    both = runner.invoke(main, ["solve", str(problem), "--sweep", "0.5", "--budget", "0.4"])
    assert both.exit_code == 2 and "--budget and --sweep" in both.output
    plain = runner.invoke(main, ["solve", str(problem), "--budget", "0.5", "-o", str(tmp_path / "s.json")])
    assert plain.exit_code == 0 and "status      optimal" in plain.output


def test_load_sweep_rejects_edited_files(tmp_path):
    record = solve_sweep(load_problem(example_problem_path()), [0.6], "0.6")
    path = tmp_path / "sweep.json"
    for edit, words in ((lambda d: d["points"][0]["choice"].update({"nope": 8}), "unknown dim 'nope'"),
                        (lambda d: d["points"][0].update(budget=1.5), "budget must be a fraction"),
                        (lambda d: d["points"][0].pop("objective"), "objective must be a finite number"),
                        (lambda d: d.update(points=[]), "non-empty list")):
        body = json.loads(json.dumps(record))
        edit(body)
        save_sweep(path, body)
        with pytest.raises(SchemaError, match=words):
            load_sweep(path)
