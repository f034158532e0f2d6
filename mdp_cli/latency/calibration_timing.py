"""Timing a calibration's networks: each pruned configuration in turns with the dense model, in two passes.

``mdp calibrate`` (``pipeline.stage_calibrate``) and the latency bench (``scripts/bench_latency_model.py``) time
the calibration's networks with this one function, so that the bench measures the calibration the product fits.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from mdp_cli.latency.calibration import latencies_in_turns
from mdp_cli.latency.timing import sample_calls_in_turns

# the calibration's calls per configuration are split between this many passes over all configurations
PASSES = 2
# untimed calls of each pair before the second pass's timed ones: every network has run (and allocated) in the
# first pass, and each timed call follows an untimed call of its own network anyway
SECOND_PASS_WARMUP = 2


def time_in_two_passes(calls: Sequence[Callable[[], Any]], warmup: int, repeats: int, device: str = "cpu",
                       ) -> tuple[list[float], tuple[list[float], list[float]]]:
    """``calls[0]`` runs the dense model, every other one a pruned configuration. Each configuration is timed in
    turns with the dense model (``timing.sample_calls_in_turns``: as deployed, as ``mdp export`` measures),
    ``repeats`` calls in all: the first half in a first pass over every configuration (after ``warmup`` untimed
    calls of each pair), the rest in a second (after at most SECOND_PASS_WARMUP).
    Returns ``latencies_in_turns``' latencies (configuration 0 the dense one) and halves, and the halves are
    the two passes: a whole pass apart (tens of seconds to minutes), not the seconds of one configuration's
    turns, so their disagreement, which raises the calibration rule's noise floor, also sees the machine drift
    between the networks that the fit would otherwise take for theirs (docs/latency.md §4)."""
    if len(calls) < 2:
        raise ValueError("time_in_two_passes needs the dense model's call and at least one configuration's")
    if repeats < PASSES:
        raise ValueError(f"repeats must be at least {PASSES} (one call per pass), got {repeats}")
    first = repeats // PASSES
    passes = [[sample_calls_in_turns(call, calls[0], settle, n, device) for call in calls[1:]]
              for settle, n in ((warmup, first), (min(warmup, SECOND_PASS_WARMUP), repeats - first))]
    # latencies_in_turns halves each configuration's samples at len // 2 == first: exactly the two passes
    pairs = [(list(a[0]) + list(b[0]), list(a[1]) + list(b[1])) for a, b in zip(*passes)]
    return latencies_in_turns(pairs)
