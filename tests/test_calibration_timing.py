"""The calibration's timing (latency/calibration_timing.py): each configuration in turns with the dense model,
in two passes over all of them, and the halves the rule's noise floor compares are those two passes."""

from __future__ import annotations

import time

import pytest

from mdp_cli.latency.calibration_timing import PASSES, time_in_two_passes


def _busy(ms: float) -> None:
    """Occupy the CPU for ``ms`` (what a network's call does; a sleep would not be timed by a CPU clock)."""
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


def test_the_halves_are_the_two_passes_a_whole_pass_apart() -> None:
    """A configuration that slows down once the pass has moved on (the machine drifting between networks) shows
    it as halves apart, which the seconds of its own turns could not; one that does not, does not. The
    latencies are each configuration's ratio to the dense model of its turns, at the dense model's level."""
    called_last = []

    def dense():
        _busy(2.0)

    def drifting():  # 0.5 ms until the pass has reached the last configuration, then 1 ms
        _busy(1.0 if called_last else 0.5)

    def last():
        called_last.append(True)
        _busy(0.5)

    measured, (first, second) = time_in_two_passes([dense, drifting, last], warmup=2, repeats=12)
    assert len(measured) == len(first) == len(second) == 3
    assert measured[0] == pytest.approx(2.0, rel=0.3)
    # the drifting configuration: 1/4 of dense in the first pass, 1/2 in the second
    assert first[1] / first[0] == pytest.approx(0.25, rel=0.25)
    assert second[1] / second[0] == pytest.approx(0.5, rel=0.25)
    # the steady one: the same fraction in both passes
    assert second[2] / second[0] == pytest.approx(first[2] / first[0], rel=0.25)
    assert first[2] / first[0] == pytest.approx(0.25, rel=0.25)


def test_two_passes_need_two_calls_and_a_configuration() -> None:
    with pytest.raises(ValueError, match=f"at least {PASSES}"):
        time_in_two_passes([lambda: None, lambda: None], warmup=0, repeats=1)
    with pytest.raises(ValueError, match="at least one configuration"):
        time_in_two_passes([lambda: None], warmup=0, repeats=4)
