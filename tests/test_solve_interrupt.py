"""Ctrl-C during a HiGHS solve stops it as an interrupt: no answer, nothing written, non-zero exit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdp_cli.solve.synthetic import resnet_problem

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _hard_problem():
    # The monolithic MILP of ResNet-50 at 32-channel steps takes HiGHS far longer than the interrupt delay.
    return resnet_problem(step=32, seed=1)


SIGINT_DURING_SOLVE = """
import os, signal, threading, time
from mdp_cli.solve import solve_problem
from mdp_cli.solve.synthetic import resnet_problem

problem = resnet_problem(step=32, seed=1)
timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
started = time.perf_counter()
timer.start()
try:
    solve_problem(problem, 0.4, formulation="monolithic", time_limit=120)
    print("solved", round(time.perf_counter() - started, 1))
except KeyboardInterrupt:
    print("interrupted", round(time.perf_counter() - started, 1))
finally:
    timer.cancel()
print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_sigint_during_highs_raises_keyboard_interrupt():
    # in a fresh interpreter, as `mdp solve` runs: an earlier test of this process may leave state behind
    # (a signal handler, a HiGHS instance) that this check must not depend on
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", SIGINT_DURING_SOLVE], capture_output=True, text=True, env=env,
                          timeout=180)
    lines = done.stdout.split("\n")
    assert lines[0].startswith("interrupted"), done.stdout + done.stderr
    assert float(lines[0].split()[1]) < 60  # stopped, not run to the time limit
    assert "handler restored True" in done.stdout  # a later solve is not affected


def test_ctrl_c_in_mdp_solve_keeps_the_previous_solution(tmp_path):
    problem_path = tmp_path / "problem.json"
    _hard_problem().save(problem_path)
    output = tmp_path / "solution.json"
    output.write_text("previous solution\n")
    process = subprocess.Popen([sys.executable, "-m", "mdp_cli", "solve", str(problem_path), "--budget", "0.4",
                                "--formulation", "monolithic", "-o", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (process.returncode, stdout, stderr)
    assert "status" not in stdout and "Traceback" not in stderr
    assert output.read_text() == "previous solution\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["problem.json", "solution.json"]  # no temp file left
