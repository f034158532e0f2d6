"""Bad input gets one line naming the file and the field; on any error no output is created or changed."""

import json
import subprocess
import sys

import pytest

from mdp_cli.errors import InfeasibleBudgetError, MdpError, SchemaError
from mdp_cli.solve import load_problem, minimum_latency, solve_problem
from mdp_cli.solve.cli import example_problem_path
from mdp_cli.solve.synthetic import example_problem


@pytest.fixture
def problem_dict():
    return json.loads(example_problem_path().read_text())


def _write(tmp_path, data, name="problem.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _error(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(SchemaError) as info:
        load_problem(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bundled_example_is_what_the_generator_makes():
    assert load_problem(example_problem_path()).content_hash() == example_problem().content_hash()


def test_table_shape_must_match_options(tmp_path, problem_dict):
    term = next(t for t in problem_dict["terms"] if len(t["dims"]) == 2)
    term["table"] = term["table"][:-1]
    assert f"terms[{problem_dict['terms'].index(term)}] ({term['name']}).table" in _error(tmp_path, problem_dict)


def test_nan_latency_is_rejected(tmp_path, problem_dict):
    text = json.dumps(problem_dict).replace(str(problem_dict["terms"][1]["table"][0][0]), "NaN", 1)
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(SchemaError, match="p.json: not valid JSON .*non-finite"):
        load_problem(path)
    problem_dict["terms"][1]["table"][0][0] = None
    assert "NaN or infinite" in _error(tmp_path, problem_dict)


def test_negative_latency_is_rejected(tmp_path, problem_dict):
    problem_dict["terms"][1]["table"][0][0] = -1.0
    assert "negative latency" in _error(tmp_path, problem_dict)


def test_decreasing_importance_is_rejected(tmp_path, problem_dict):
    dim = next(d for d in problem_dict["dims"] if len(d["options"]) > 2)
    dim["importance"][1] = dim["importance"][0] - 1.0
    message = _error(tmp_path, problem_dict)
    assert f"({dim['name']}).importance" in message and "decreases from option 0 to 1" in message


def test_unknown_dim_and_block_references(tmp_path, problem_dict):
    problem_dict["terms"][2]["dims"][0] = "no_such_dim"
    assert "names dim 'no_such_dim'" in _error(tmp_path, problem_dict)
    problem_dict = json.loads(example_problem_path().read_text())
    problem_dict["terms"][3]["block"] = "ghost"
    assert "names block 'ghost'" in _error(tmp_path, problem_dict)


def test_options_must_increase_and_end_at_full_size(tmp_path, problem_dict):
    problem_dict["dims"][1]["options"] = list(reversed(problem_dict["dims"][1]["options"]))
    assert "strictly increasing" in _error(tmp_path, problem_dict)


def test_inconsistent_dense_latency_is_rejected(tmp_path, problem_dict):
    problem_dict["dense_latency"] *= 1.5
    assert "dense_latency" in _error(tmp_path, problem_dict)


def test_wrong_schema_and_newer_version(tmp_path, problem_dict):
    assert "expected 'mdp.problem'" in _error(tmp_path, {**problem_dict, "schema": "mdp.solution"})
    assert "upgrade mdp" in _error(tmp_path, {**problem_dict, "version": 99})


def test_budget_below_smallest_reachable_latency_names_it():
    problem = example_problem()
    lowest = minimum_latency(problem)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve_problem(problem, f"{lowest * 0.9!r}ms")
    assert f"{lowest:.4g} ms" in str(info.value)


def test_budget_at_or_above_dense_means_nothing_to_prune():
    problem = example_problem()
    for budget in (1.0, "120%", f"{problem.dense_latency * 2}ms"):
        solution = solve_problem(problem, budget)
        assert solution.status == "nothing_to_prune"
        assert solution.choice == {d.name: d.size for d in problem.dims} and all(solution.kept.values())


@pytest.mark.parametrize("text", ["12", "50", 1.2, "1e1"])
def test_bare_number_above_one_is_an_error_suggesting_units(text):
    """A bare 12 or 50 is almost surely 12 ms or 50 %, not twelve times the dense latency."""
    with pytest.raises(MdpError) as info:
        solve_problem(example_problem(), text)
    message = str(info.value)
    assert "\n" not in message and "ms" in message and "%" in message


def test_bare_number_above_one_on_the_cli_writes_nothing(tmp_path):
    output = tmp_path / "solution.json"
    result = _mdp("solve", "--example", "--budget", "12", "-o", str(output))
    assert result.returncode == 2 and "12ms" in result.stderr and "12%" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not output.exists()


@pytest.mark.parametrize("text", ["abc", "-0.5", "3.5 parsecs", "0"])
def test_malformed_budget(text):
    with pytest.raises(MdpError, match="budget"):
        solve_problem(example_problem(), text)


def test_absolute_and_percentage_budgets_agree():
    problem = example_problem()
    dense = problem.dense_latency
    a = solve_problem(problem, 0.6)
    b = solve_problem(problem, "60%")
    c = solve_problem(problem, f"{0.6 * dense * 1000!r}us")
    assert a.objective == pytest.approx(b.objective) == pytest.approx(c.objective)


def _mdp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mdp_cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_error_leaves_existing_output_untouched(tmp_path):
    output = tmp_path / "solution.json"
    output.write_text("previous solution")
    result = _mdp("solve", "--example", "--budget", "0.0001", "-o", str(output))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "smallest reachable latency" in result.stderr
    assert output.read_text() == "previous solution"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["solution.json"]


def test_cli_bad_problem_file_is_one_line_and_writes_nothing(tmp_path):
    bad = _write(tmp_path, {"schema": "mdp.problem", "version": 1, "dims": []}, "bad.json")
    result = _mdp("solve", str(bad), "-o", str(tmp_path / "out.json"))
    assert result.returncode == 2 and f"{bad}: dims: must be a non-empty list" in result.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("bad", ["1.5", True, [1, 2], {"ms": 1}])
def test_latency_that_is_not_a_number_is_rejected(tmp_path, problem_dict, bad):
    """A string latency used to be read as the number it spells (numpy converts "1.5" silently)."""
    term = next(t for t in problem_dict["terms"] if len(t["dims"]) == 2)
    term["table"][0][0] = bad
    message = _error(tmp_path, problem_dict)
    assert f"({term['name']}).table" in message
    assert "not a number" in message or "nested list of numbers" in message


def test_whole_table_given_as_a_string_is_rejected(tmp_path, problem_dict):
    term = next(t for t in problem_dict["terms"] if not t["dims"])
    term["table"] = str(term["table"])
    assert "not a number" in _error(tmp_path, problem_dict)


def test_hand_written_problem_in_the_docs_loads_and_solves(tmp_path):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "schemas.md").read_text()
    example = text.split("### Writing a problem by hand")[1].split("```json")[1].split("```")[0]
    path = _write(tmp_path, json.loads(example))
    problem = load_problem(path)
    assert problem.units == "us" and problem.dense_latency == 120 + 300 + 1150
    solution = solve_problem(problem, "900us")
    assert solution.choice == {"stem": 32, "conv": 16} and solution.predicted_latency == 830
    assert solve_problem(problem, "1.21ms").choice["conv"] == 32  # 120 + 300 + 790 us, exactly on the budget
