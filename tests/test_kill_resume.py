"""SIGKILL and SIGINT at random points of `mdp run`, then a rerun: the final artifacts equal those of an
uninterrupted run, and no artifact under its final name is ever half-written.

The interrupted runs start from a copy of the reference run's LUT and apply the reference run's in-network
calibration (both are timings), so every stage after them is deterministic (seeded random init, seeded
data) and the artifacts must be equal to the byte where they hold no timing or time stamp. Profiling itself is killed on a fresh LUT: the rerun completes it with the same rows
(their values are timings, so only the keys are compared)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "model": "tv:resnet18", "resolution": 32, "random_init": True,  # tv: the library said, no note on stderr
    "space": {"max_options": 3, "multiple": 8},
    "profile": {"warmup": 2, "repeats": 8},
    "score": {"data": "synthetic", "batches": 2, "batch_size": 4},
    "solve": {"budget": 0.6},
    "export": {"tolerance": 10.0, "repeats": 5},
}
JSON_ARTIFACTS = ("space.json", "calibration.json", "importance.json", "problem.json", "solution.json",
                  "state.json", "exported/arch.json", "exported/report.json")
VOLATILE = {"provenance", "created", "measured_ms", "measured_dense_ms", "spread_ms", "prediction_error",
            "measured_fraction", "fraction_error", "within_tolerance", "clock", "exported", "solve_seconds",
            "seconds", "stages", "timings", "solver"}  # timings and solver statistics differ run to run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_config(directory: Path, lut_dir: Path, calibration: Path | None = None) -> Path:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["profile"]["lut_dir"] = str(lut_dir)
    if calibration is not None:
        cfg["calibrate"] = {"file": str(calibration)}
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mdp_run(config: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdp_cli", "run", str(config), "--run-dir", str(run_dir), "-q"],
                            env=env(), cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def assert_nothing_half_written(run_dir: Path) -> None:
    for name in JSON_ARTIFACTS:
        path = run_dir / name
        if path.exists():
            json.loads(path.read_text())  # a final name always holds a complete file
    weights = run_dir / "exported" / "model.safetensors"
    if weights.exists():
        from safetensors.torch import load_file

        load_file(str(weights))


def interrupt_at(config: Path, run_dir: Path, delay: float, sig: int) -> int:
    proc = mdp_run(config, run_dir)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    # -SIGINT: the interrupt came before the CLI's handler ran (while importing) or after it returned; Python
    # then ends by the signal itself, which a shell reports as 130 too
    if proc.returncode not in (0, -signal.SIGKILL, 130, -signal.SIGINT):
        raise AssertionError(f"exit {proc.returncode}: {err}")
    if sig == signal.SIGINT and proc.returncode == 130:
        assert [line for line in err.splitlines() if line.startswith("mdp: ")] == [
            "mdp: interrupted (artifacts are written atomically: none is left half-written)"], err
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    config = write_config(base, base / "luts")
    proc = mdp_run(config, base / "run")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return base


def test_kills_after_profiling_then_rerun_equal_the_uninterrupted_run(reference, tmp_path):
    rng = random.Random(0)
    ref = reference / "run"
    for k, sig in enumerate([signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT]):
        base = tmp_path / f"try{k}"
        base.mkdir()
        shutil.copytree(reference / "luts", base / "luts")
        shutil.copy(ref / "calibration.json", base / "calibration.json")
        config = write_config(base, base / "luts", base / "calibration.json")
        interrupt_at(config, base / "run", rng.uniform(2.0, 9.0), sig)
        assert_nothing_half_written(base / "run")
        proc = mdp_run(config, base / "run")
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        for name in JSON_ARTIFACTS:
            if name in ("state.json", "calibration.json"):  # given, not fitted, in the interrupted runs
                continue
            got, want = json.loads((base / "run" / name).read_text()), json.loads((ref / name).read_text())
            assert strip(got) == strip(want), name
        got = (base / "run" / "exported" / "model.safetensors").read_bytes()
        assert got == (ref / "exported" / "model.safetensors").read_bytes()


def test_kills_during_profiling_keep_rows_and_the_rerun_completes_the_lut(reference, tmp_path):
    want = pd.read_csv(next((reference / "luts").glob("*.csv")))
    config = write_config(tmp_path, tmp_path / "luts")
    for delay, sig in ((4.0, signal.SIGINT), (6.0, signal.SIGKILL)):
        interrupt_at(config, tmp_path / "run", delay, sig)
        for lut in (tmp_path / "luts").glob("*.csv"):
            frame = pd.read_csv(lut)  # complete: rows kept so far, none half-written
            assert frame["median_ms"].notna().all() and set(zip(frame["signature"], frame["sizes"].fillna(""))) <= \
                set(zip(want["signature"], want["sizes"].fillna("")))
    proc = mdp_run(config, tmp_path / "run")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    got = pd.read_csv(next((tmp_path / "luts").glob("*.csv")))
    assert sorted(zip(got["signature"], got["sizes"].fillna(""))) == sorted(zip(want["signature"], want["sizes"].fillna("")))
