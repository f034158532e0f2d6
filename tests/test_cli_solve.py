import json
import subprocess
import sys

import pytest

from mdp_cli.solve import load_problem, load_solution
from mdp_cli.solve.cli import example_problem_path


def _mdp(*args):
    return subprocess.run([sys.executable, "-m", "mdp_cli", *args], capture_output=True, text=True)


def test_help_lists_every_stage():
    result = _mdp("--help")
    assert result.returncode == 0
    for stage in ("profile", "score", "solve", "export", "finetune", "run"):
        assert stage in result.stdout


def test_solve_example_writes_a_valid_solution(tmp_path):
    output = tmp_path / "solution.json"
    result = _mdp("solve", "--example", "--budget", "0.5", "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "status      optimal" in result.stdout
    problem = load_problem(example_problem_path())
    solution = load_solution(output, problem)
    assert solution.predicted_latency <= 0.5 * problem.dense_latency
    data = json.loads(output.read_text())
    assert data["schema"] == "mdp.solution" and data["version"] == 1
    assert data["provenance"]["versions"]["highspy"]
    assert data["problem_hash"] == problem.content_hash()
    assert {"build_s", "solve_s"} <= set(data["timings"])


def test_solution_for_another_problem_is_refused(tmp_path):
    from mdp_cli.errors import SchemaError
    from mdp_cli.solve.synthetic import resnet_problem

    output = tmp_path / "solution.json"
    assert _mdp("solve", "--example", "-o", str(output)).returncode == 0
    with pytest.raises(SchemaError, match="solved for another problem"):
        load_solution(output, resnet_problem(paper_granularity=True))


def test_ablation_flags(tmp_path):
    result = _mdp("solve", "--example", "--budget", "0.6", "--latency-model", "linear", "--no-blocks")
    assert result.returncode == 0, result.stderr
    assert "linear est." in result.stdout and "blocks      0 removed" in result.stdout


def test_solve_without_argument_reads_problem_json_here(tmp_path):
    import shutil

    shutil.copy(example_problem_path(), tmp_path / "problem.json")
    result = subprocess.run([sys.executable, "-m", "mdp_cli", "solve", "--budget", "0.6", "-o", "solution.json"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "solution.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "mdp_cli", "solve"], capture_output=True, text=True, cwd=empty)
    assert result.returncode == 2 and "no problem.json here" in result.stderr
