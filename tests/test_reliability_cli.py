"""The CLI boundary: every failure is one line on stderr and an exit code; --debug shows the traceback."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mdp_cli.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USER_ERROR, _Group, describe_os_error, one_line
from mdp_cli.errors import MdpError

ROOT = Path(__file__).resolve().parents[1]


def mdp(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mdp_cli", *args], capture_output=True, text=True, env=full_env,
                          timeout=300, **kw)


def boundary_group(error: BaseException) -> click.Group:
    """A group with the CLI's error boundary and one command raising ``error`` (what a stage would raise)."""

    @click.group(cls=_Group)
    @click.option("--debug", is_flag=True)
    def group(debug):
        pass

    @group.command("fail")
    def fail():
        raise error

    return group


@pytest.mark.parametrize("error, code, expected", [
    (MdpError("problem.json: field 'dims' must be a list"), EXIT_USER_ERROR, "field 'dims' must be a list"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
    (OSError(errno.ENOSPC, "No space left on device", "run/solution.json"), EXIT_FAILURE,
     "run/solution.json: no space left on the device"),
    (PermissionError(errno.EACCES, "Permission denied", "luts/cpu.csv"), EXIT_FAILURE,
     "luts/cpu.csv: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "exported/arch.json"), EXIT_FAILURE,
     "exported/arch.json: read-only file system"),
    (ValueError("shapes (3,) and (4,) do not align\nsecond line"), EXIT_FAILURE, "--debug"),
])
def test_every_error_is_one_line_with_its_exit_code(error, code, expected):
    result = CliRunner().invoke(boundary_group(error), ["fail"])
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdp: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output


def test_debug_flag_lets_the_traceback_through():
    result = CliRunner().invoke(boundary_group(ValueError("boom")), ["--debug", "fail"])
    assert isinstance(result.exception, ValueError)  # re-raised: Python prints the traceback


def test_dataloader_worker_errors_keep_only_the_message():
    text = ("Caught MdpError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "  File \"x.py\", line 1, in f\nmdp_cli.errors.MdpError: data/train/a/1.jpg: not a readable image")
    assert one_line(text) == "data/train/a/1.jpg: not a readable image"


def test_os_error_without_a_file_still_says_what_to_do():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left")


def test_real_command_errors_and_debug(tmp_path):
    missing = tmp_path / "nope.json"
    r = mdp("solve", str(missing))
    assert r.returncode == EXIT_USER_ERROR and r.stderr.strip() == f"mdp: error: {missing}: no such file"
    r = mdp("--debug", "solve", str(missing))
    assert "Traceback" in r.stderr and r.returncode != 0
    r = mdp("solve", str(missing), env={"MDP_DEBUG": "1"})
    assert "Traceback" in r.stderr


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs user namespaces (unshare -rm) to mount a tiny tmpfs")
def test_full_and_read_only_disks_are_one_line_and_leave_nothing(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = f"PYTHONPATH={ROOT} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1"
    solve = f"{env} {sys.executable} -m mdp_cli solve --example -o {mnt}/solution.json >/dev/null"
    script = (f"mount -t tmpfs -o size=16k tmpfs {mnt} && "
              f"(dd if=/dev/zero of={mnt}/fill bs=1k count=64 2>/dev/null; true) && "
              f"{solve}; echo rc=$?; ls -A {mnt}; rm {mnt}/fill; mount -o remount,ro {mnt}; {solve}; echo rc=$?")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    out = r.stdout.split()
    assert out == ["rc=1", "fill", "rc=1"], r.stdout + r.stderr  # no half-written solution beside the filler
    lines = r.stderr.strip().splitlines()
    assert lines == [f"mdp: error: {mnt}/solution.json: no space left on the device; free space or write to another "
                     "directory",
                     f"mdp: error: {mnt}/solution.json: read-only file system; write to another directory "
                     "(--output / --run-dir / --lut-dir)"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = mdp("solve", "--example", "-o", str(ro / "solution.json"))
    assert r.returncode == EXIT_FAILURE
    assert r.stderr.strip() == f"mdp: error: {ro}/solution.json: permission denied; fix the permissions or write " \
                               "to another directory"


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """A real SIGINT in the middle of a stage (profiling a model): exit 130, one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mdp_cli", "profile", "--model", "resnet18", "--resolution", "32",
                             "--repeats", "200", "--lut", str(tmp_path / "lut.csv")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = ""
    deadline = time.time() + 240
    while "profile resnet18" not in seen and time.time() < deadline:  # the progress bar: measuring has begun
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    # tqdm clears its bar with carriage returns and escape codes; the message is the one line after it
    lines = [line for line in (seen + rest).replace("\r", "\n").splitlines()
             if "mdp:" in line and "mdp: note:" not in line]  # the model-name note is not an error
    assert len(lines) == 1 and lines[0].endswith(
        "mdp: interrupted (artifacts are written atomically: none is left half-written)"), repr(seen + rest)
    assert "Traceback" not in seen + rest
