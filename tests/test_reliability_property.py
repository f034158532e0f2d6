"""Property: random and corrupted artifacts given to the readers raise only MdpError (one line), never
another exception, and no reader writes anything, whether it fails or not.

Seeds are valid files (the bundled example problem, its solution, an importance record, a LUT, a YAML
config); each example damages one of them: random bytes, a truncation, flipped bytes, or one node of its
JSON/YAML tree replaced, deleted or turned into a string, or one LUT cell replaced."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdp_cli.artifacts import read_json
from mdp_cli.errors import MdpError
from mdp_cli.importance.taylor import read_importance
from mdp_cli.latency.lut import COLUMNS, Lut
from mdp_cli.latency.timing import clock_for
from mdp_cli.pipeline import load_config
from mdp_cli.solve import load_problem, solve_problem
from mdp_cli.solve.cli import example_problem_path
from mdp_cli.solve.solution import load_solution

# MDP_PROPERTY_EXAMPLES=2000 for a thorough sweep; the default keeps the file near 30 s on 2 busy cores.
SCALE = int(os.environ.get("MDP_PROPERTY_EXAMPLES", "40"))
EXAMPLES = settings(max_examples=SCALE, deadline=None, derandomize=True, report_multiple_bugs=False, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PROBLEM = json.loads(example_problem_path().read_text())
_LOADED = load_problem(example_problem_path())
SOLUTION = solve_problem(_LOADED, 0.6).to_dict()
SOLUTION["provenance"] = {}
IMPORTANCE = {"schema": "mdp.importance", "version": 1, "model": "toy", "provenance": {}, "dims": {
    "a": {"scores": [3.0, 1.0, 2.0, 0.5], "step": 2, "options": [2, 4], "align": 1, "order": [0, 2, 1, 3],
          "cumulative": [5.0, 6.5], "base": [5.0, 6.5], "block": None, "gated": {}},
    "b": {"scores": [1.0, 0.0], "step": 1, "options": [1, 2], "align": 1, "order": [0, 1],
          "cumulative": [1.0, 1.0], "base": [1.0, 1.0], "block": "blk", "gated": {}}}}
LUT_ARGS = ("cpu-test", "float32", 1, 1)
LUT_ROWS = [{"op": "conv", "signature": 'conv{"k":3}', "sizes": f"cin={a};cout={b}", "device": "cpu-test",
             "dtype": "float32", "batch": 1, "threads": 1, "clock": clock_for("cpu", 1), "median_ms": 0.1 * a * b,
             "spread_ms": 0.01, "p10_ms": 0.09 * a * b, "ref_ms": 1.0, "repeats": 3, "warmup": 1,
             "created": "2026-01-01T00:00:00+00:00"} for a in (8, 16) for b in (4, 8)]
CONFIG = {"model": "resnet18", "resolution": 32, "space": {"max_options": 4, "multiple": 1},
          "profile": {"device": "cpu", "grid": 1, "repeats": 5}, "score": {"data": "synthetic", "batches": 2},
          "solve": {"budget": 0.5}, "export": {"measure": False}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=6),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


@st.composite
def damaged_tree(draw, seed: Any) -> Any:
    """The seed with one node replaced (by a random value, its string form or a scaled number) or deleted."""
    tree = copy.deepcopy(seed)
    path = draw(st.sampled_from(_paths(tree)[1:]))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    old = parent[path[-1]]
    action = draw(st.sampled_from(["replace", "delete", "stringify", "scale"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "stringify":
        parent[path[-1]] = str(old)
    elif action == "scale" and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[path[-1]] = old * draw(st.sampled_from([-1, 0, 2, 1e300, math.inf, math.nan]))
    else:
        parent[path[-1]] = draw(json_values)
    return tree


@st.composite
def damaged_bytes(draw, seed: bytes) -> bytes:
    action = draw(st.sampled_from(["random", "truncate", "flip"]))
    if action == "random":
        return draw(st.binary(max_size=200))
    if action == "truncate":
        return seed[: draw(st.integers(0, max(0, len(seed) - 1)))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _json_text(tree: Any) -> str:
    return json.dumps(tree, indent=1)  # allow_nan: non-finite numbers reach the readers as NaN/Infinity


def file_contents(seed: Any, fmt: str):
    if fmt == "json":
        return st.one_of(damaged_tree(seed).map(_json_text), damaged_bytes(_json_text(seed).encode()))
    if fmt == "yaml":
        text = yaml.safe_dump(seed)
        return st.one_of(damaged_tree(seed).map(yaml.safe_dump), damaged_bytes(text.encode()))
    raise ValueError(fmt)


@st.composite
def damaged_lut(draw) -> bytes:
    frame = pd.DataFrame(LUT_ROWS, columns=COLUMNS)
    text = frame.to_csv(index=False)
    if draw(st.booleans()):
        return draw(damaged_bytes(text.encode()))
    frame = frame.astype(object)
    row = draw(st.integers(0, len(frame) - 1))
    column = draw(st.sampled_from(COLUMNS))
    action = draw(st.sampled_from(["cell", "duplicate", "drop_column"]))
    if action == "cell":
        frame.loc[row, column] = draw(st.none() | st.floats() | st.integers() | st.text(max_size=6))
    elif action == "duplicate":
        frame = pd.concat([frame, frame.iloc[[row]]], ignore_index=True)
        frame.loc[len(frame) - 1, column] = draw(st.floats() | st.text(max_size=4))
    else:
        frame = frame.drop(columns=[column])
    return frame.to_csv(index=False).encode()


def check_reader(name: str, content: str | bytes, read: Callable[[Path], Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        try:
            read(path)
        except MdpError as exc:
            assert "\n" not in str(exc).strip(), f"{type(exc).__name__} spans lines: {exc}"
        assert sorted(p.name for p in Path(tmp).iterdir()) == [name], "a reader wrote a file"
        assert path.read_bytes() == data, "a reader changed its input"


@EXAMPLES
@given(file_contents(PROBLEM, "json"))
def test_problem_reader(content):
    check_reader("problem.json", content, load_problem)


@settings(EXAMPLES, max_examples=max(10, SCALE // 3))
@given(damaged_tree(PROBLEM))
def test_solver_on_damaged_problems(tree):
    """What the problem reader accepts, the solver solves or refuses in one line."""
    def read_and_solve(path):
        problem = load_problem(path)
        solution = solve_problem(problem, 0.6, time_limit=20)
        assert solution.predicted_latency <= solution.budget * (1 + 1e-6) or solution.status == "nothing_to_prune"

    check_reader("problem.json", _json_text(tree), read_and_solve)


@EXAMPLES
@given(file_contents(SOLUTION, "json"))
def test_solution_reader(content):
    check_reader("solution.json", content, lambda p: load_solution(p, _LOADED))


@EXAMPLES
@given(file_contents(IMPORTANCE, "json"))
def test_importance_reader(content):
    check_reader("importance.json", content, read_importance)


@EXAMPLES
@given(st.sampled_from(["mdp.problem", "mdp.solution", "mdp.importance", "mdp.arch"]),
       file_contents(SOLUTION, "json"))
def test_envelope_reader(schema, content):
    check_reader("artifact.json", content, lambda p: read_json(p, schema, 1))


@EXAMPLES
@given(damaged_lut())
def test_lut_reader(content):
    def read(path):
        lut = Lut.open(path, *LUT_ARGS, create=False)
        for row in LUT_ROWS:
            value = lut.get(row["signature"], row["sizes"])
            assert value is None or math.isfinite(value) and value >= 0

    check_reader("lut.csv", content, read)


@EXAMPLES
@given(file_contents(CONFIG, "yaml"))
def test_config_reader(content):
    check_reader("config.yaml", content, load_config)


def test_seeds_are_valid():
    """The undamaged seeds load: the damage, not the seed, is what the properties exercise."""
    for name, content, read in [
        ("p.json", _json_text(PROBLEM), load_problem), ("s.json", _json_text(SOLUTION), lambda p: load_solution(p, _LOADED)),
        ("i.json", _json_text(IMPORTANCE), read_importance),
        ("l.csv", pd.DataFrame(LUT_ROWS, columns=COLUMNS).to_csv(index=False), lambda p: Lut.open(p, *LUT_ARGS)),
        ("c.yaml", yaml.safe_dump(CONFIG), load_config),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_text(content)
            assert read(Path(tmp) / name) is not None
