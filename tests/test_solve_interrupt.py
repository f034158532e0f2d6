"""Ctrl-C during a HiGHS solve stops it as an interrupt: no answer, nothing written, non-zero exit."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mdp_cli.solve import solve_problem
from mdp_cli.solve.synthetic import resnet_problem

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _hard_problem():
    # The monolithic MILP of ResNet-50 at 32-channel steps takes HiGHS far longer than the interrupt delay.
    return resnet_problem(step=32, seed=1)


def test_sigint_during_highs_raises_keyboard_interrupt():
    problem = _hard_problem()
    # Python's own Ctrl-C handler, as a fresh `mdp` process has it (an earlier test in this process may have
    # left another one installed, e.g. by a library's worker set-up)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            solve_problem(problem, 0.4, formulation="monolithic", time_limit=120)
    finally:
        timer.cancel()
    assert time.perf_counter() - started < 60  # stopped, not run to the time limit
    # The handler is restored: a later solve is not affected.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, before)


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
