"""LUT reliability: concurrent writers lose no row, duplicate rows are never resolved silently, and a
LUT that lacks rows is only interpolated inside a profiled grid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.latency.lut import COLUMNS, Lut, require_rows, sizes_key, term_table
from mdp_cli.latency.timing import clock_for
from mdp_cli.space.core import PruningSpace, SpaceDim, SpaceTerm

ROOT = Path(__file__).resolve().parents[1]
CPU = ("cpu-test", "float32", 1, 1)


def row(signature: str, sizes: str, ms: float) -> dict:
    return {"op": signature.split("{")[0], "signature": signature, "sizes": sizes, "device": CPU[0], "dtype": CPU[1],
            "batch": CPU[2], "threads": CPU[3], "clock": clock_for("cpu", 1), "median_ms": ms, "spread_ms": 0.0,
            "p10_ms": ms, "ref_ms": 1.0, "repeats": 3, "warmup": 1, "created": "2026-01-01T00:00:00+00:00"}


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from tests.test_reliability_lut import CPU, row
from mdp_cli.latency.lut import Lut
path, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lut = Lut.open(path, *CPU)
while not go.exists():
    time.sleep(0.001)
for k in range(25):  # like mdp profile: measure a few rows, save, measure more...
    lut.add_rows([row(tag + '{"k":1}', f"cout={k + 1}", 0.5 + k)])
    lut.save(last_model=tag)
"""


def test_two_processes_profiling_into_one_lut_lose_no_row(tmp_path):
    path, go = tmp_path / "shared.csv", tmp_path / "go"
    Lut.open(path, *CPU).save()  # an existing (empty) LUT, as when a second profile starts
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(go), str(ROOT)], env=env)
             for tag in ("opA", "opB")]
    go.touch()  # both start writing at the same moment
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    lut = Lut.open(path, *CPU, create=False)
    assert len(lut) == 50
    for tag in ("opA", "opB"):
        for k in range(25):
            assert lut.get(tag + '{"k":1}', f"cout={k + 1}") == 0.5 + k


def test_save_merges_rows_another_writer_added(tmp_path):
    path = tmp_path / "lut.csv"
    first, second = Lut.open(path, *CPU), Lut.open(path, *CPU)
    first.add_rows([row("a{}", "cout=1", 1.0)])
    first.save()
    second.add_rows([row("b{}", "cout=1", 2.0), row("a{}", "cout=1", 1.5)])  # both measured a{} cout=1
    second.save()
    merged = Lut.open(path, *CPU)
    assert len(merged) == 2 and merged.get("b{}", "cout=1") == 2.0
    assert merged.get("a{}", "cout=1") == 1.5  # the saving process's own measurement wins
    assert second.get("a{}", "cout=1") == 1.5 and len(second) == 2


def _write(path: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)


def test_duplicate_rows_that_agree_are_read_once(tmp_path):
    path = tmp_path / "dup.csv"
    _write(path, [row("a{}", "cout=1", 1.0), row("b{}", "cout=1", 3.0), row("a{}", "cout=1", 1.0)])
    lut = Lut.open(path, *CPU)
    assert len(lut) == 2 and lut.get("a{}", "cout=1") == 1.0


def test_duplicate_rows_that_disagree_are_one_line_errors(tmp_path):
    path = tmp_path / "dup.csv"
    _write(path, [row("a{}", "cout=1", 1.0), row("b{}", "cout=1", 3.0), row("a{}", "cout=1", 7.0)])
    with pytest.raises(SchemaError) as err:
        Lut.open(path, *CPU)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"{path}: rows 2 and 4 both measure a at cout=1 with different latencies (1 vs 7 ms); "
                       "delete one of them (or the file, and re-profile)")


def small_space(options_a=(16, 32, 48, 64), options_b=(8, 16)) -> PruningSpace:
    dims = [SpaceDim("a", options_a[-1], 16, tuple(options_a)), SpaceDim("b", options_b[-1], 8, tuple(options_b))]
    terms = [SpaceTerm("layer1", "conv", ("a", "b"), ("cin", "cout"), {"k": 3})]
    return PruningSpace("toy", "cnn", (3, 8, 8), dims, terms, [])


def bilinear(cin: int, cout: int) -> float:
    return 0.1 + 0.001 * cin * cout


def lut_with(path: Path, space: PruningSpace, a_sizes, b_sizes) -> Lut:
    lut = Lut.open(path, *CPU)
    sig = space.terms[0].signature()
    lut.add_rows([row(sig, sizes_key(("cin", "cout"), (a, b)), bilinear(a, b)) for a in a_sizes for b in b_sizes])
    return lut


def test_missing_rows_are_refused_without_a_grid(tmp_path):
    """Profiled with 2 options per dim, asked for 4: refused (it used to be interpolated, up to 355 % off)."""
    space = small_space()
    lut = lut_with(tmp_path / "l.csv", space, (32, 64), (8, 16))
    with pytest.raises(MdpError) as err:
        require_rows(lut, space, grid=1)
    assert str(err.value) == (
        f"{tmp_path / 'l.csv'}: op conv of term layer1 lacks 4 of 8 rows (cin=16;cout=8, cin=16;cout=16, "
        "cin=48;cout=8, ... 1 more); the LUT must hold every size the space allows (grid 1: nothing is "
        "interpolated); run 'mdp profile' for this model with the same --step/--max-options/--grid")
    with pytest.raises(MdpError, match="not measured at 4 sizes"):
        term_table(lut, space.terms[0].signature(), ("cin", "cout"), [(16, 32, 48, 64), (8, 16)], interpolate=False)


def test_a_profiled_grid_is_interpolated_and_its_points_are_required(tmp_path):
    space = small_space()
    # grid 2 over 4 options measures options 0, 2 and the last: 16, 48, 64
    lut = lut_with(tmp_path / "l.csv", space, (16, 48, 64), (8, 16))
    require_rows(lut, space, grid=2)
    table = term_table(lut, space.terms[0].signature(), ("cin", "cout"), [(16, 32, 48, 64), (8, 16)])
    truth = np.array([[bilinear(a, b) for b in (8, 16)] for a in (16, 32, 48, 64)])
    np.testing.assert_allclose(table, truth, rtol=1e-12)  # exact for a bilinear cost
    sparse = lut_with(tmp_path / "s.csv", space, (16, 64), (8, 16))  # grid point 48 missing
    with pytest.raises(MdpError, match=r"lacks 2 of 6 rows \(cin=48;cout=8, cin=48;cout=16\); the grid-2 points"):
        require_rows(sparse, space, grid=2)
    require_rows(lut_with(tmp_path / "f.csv", space, (16, 32, 48, 64), (8, 16)), space, grid=1)  # complete: fine


def test_issue_scenario_profiled_with_two_options_solved_with_four(tmp_path):
    """The probe's case on a real profile: resnet18 profiled with --max-options 2, problem asked with 4."""
    from mdp_cli.latency.profile import profile_space
    from mdp_cli.space.cnn import discover_space

    _, coarse = discover_space("resnet18", 32, max_options=2)
    summary = profile_space(coarse.space, lut_dir=tmp_path, warmup=1, repeats=3, progress=False)
    lut = Lut.open(summary["lut"], summary["device"], summary["dtype"], summary["batch"], summary["threads"])
    require_rows(lut, coarse.space, grid=1)  # what was profiled is complete
    _, fine = discover_space("resnet18", 32, max_options=4)
    with pytest.raises(MdpError, match=r"lacks \d+ of \d+ rows .*grid 1: nothing is interpolated.*mdp profile"):
        require_rows(lut, fine.space, grid=1)
