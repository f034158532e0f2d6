"""The one profiling engine: time what a family asks for, the same way for every family, into the shared LUT.

A family says *what* to time as a list of ``Measurement`` (op name from the op registry, the fixed
context, the sizes to build it at, the LUT row it fills) and *how its terms like to be timed* as a
``TimingPlan``; this module owns the loop: deduplication against the LUT and across terms, warm-up,
turns (round-robin), the clock (``latency/timing.py``), the statistics, one progress bar, and saving
rows as they complete so that an interrupted profile keeps what it measured (``mdp profile`` again
resumes: rows already in the LUT are never re-measured).

Turns: the items of a chunk take turns, one call each per round, beside a fixed reference op
(``timing.reference_item``, recorded as ``ref_ms``, a load indicator). A plan with ``rounds > 1``
takes each item's samples in that many passes over *all* items, so a slow drift of the machine
during profiling spreads over every row instead of biasing the rows timed at the wrong moment. An item
with ``copies > 1`` is timed as a chain of distinct copies (weights stream from memory as inside the
whole model) and each sample divided by the copy count.

Runtimes (``latency/runtimes.py``): in ONNX Runtime or TensorRT each item is its own exported graph, and
one run of a graph costs a fixed overhead that the whole model pays once; the median of a next-to-empty
graph timed in the same rounds (``runtimes.call_overhead_item``) is subtracted from every sample.
"""

from __future__ import annotations

import datetime as _dt
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from mdp_cli.latency.lut import Lut
from mdp_cli.latency.ops import get_op


@dataclass(frozen=True)
class Measurement:
    """One LUT row to measure: ``op`` built by the op registry at ``sizes`` (keyed by role) in ``context``.

    ``signature`` and ``sizes_key`` are the row's identity in the LUT. Rows with equal ``share`` are one
    timing (e.g. two terms whose reference points coincide); by default every row is its own timing.
    """

    op: str
    signature: str
    sizes_key: str
    context: dict[str, Any]
    sizes: dict[str, int]
    copies: int = 1
    share: Hashable = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.signature, self.sizes_key)

    @property
    def timing_key(self) -> Hashable:
        return self.share if self.share is not None else self.key


@dataclass(frozen=True)
class TimingPlan:
    """How a family's terms are timed: ``chunk`` items take turns (with the reference op when
    ``reference``), samples in ``rounds`` passes over all items, items ``shuffle``d (seed 0) first.

    ``recheck`` > 0 (needs ``rounds`` > 1 and the reference): an item whose per-round medians, each taken
    relative to the reference op of its own rounds, differ by more than this fraction (max / min - 1) was
    disturbed in one of its passes; it gets one more pass, and its row is the median over all of them."""

    chunk: int = 24
    rounds: int = 1
    reference: bool = True
    shuffle: bool = True
    recheck: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def with_rounds(plan: TimingPlan, rounds: int | None) -> TimingPlan:
    """``plan`` with ``rounds`` passes where given (``profile.rounds``); a single pass has nothing to re-check."""
    if rounds is None:
        return plan
    return replace(plan, rounds=int(rounds), recheck=plan.recheck if int(rounds) > 1 else 0.0)


def profile_into_lut(lut: Lut, measurements: Sequence[Measurement], plan: TimingPlan, device: str = "cpu",
                     warmup: int = 10, repeats: int = 30, label: str = "", progress: bool = True,
                     save_every_s: float = 30.0, log: Callable[[str], None] | None = None,
                     shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Measure the rows of ``measurements`` that ``lut`` lacks, add them and save the LUT.

    Returns ``{"measured", "reused", "configurations", "timings", "seconds"}``: rows written, rows already
    there, rows asked for, distinct timings run, wall time. ``lut.batch``, ``lut.dtype``, ``lut.threads``
    and ``lut.runtime`` say how each item is run (each item is exported to and timed in that runtime).

    ``shard=(i, n)``: measure only the timings whose ``shard_of`` is ``i`` (1-based) of ``n``, so that ``n``
    machines profile one grid into one LUT (``Lut.save`` merges their rows under a lock); the split is
    by the timing's key, so it does not depend on what the LUT already holds or on the order."""
    import torch

    from mdp_cli.latency.runtimes import call_overhead_item, runner
    from mdp_cli.latency.timing import clock_for, reference_item, sample_calls_round_robin, threads

    start = time.perf_counter()
    wanted: dict[tuple[str, str], Measurement] = {}
    for m in measurements:
        wanted.setdefault(m.key, m)
    todo_rows = [m for key, m in wanted.items() if key not in lut]
    reused = len(wanted) - len(todo_rows)
    groups: dict[Hashable, list[Measurement]] = {}
    for m in todo_rows:
        groups.setdefault(m.timing_key, []).append(m)
    if shard is not None:
        index, count = shard
        groups = {key: rows for key, rows in groups.items() if shard_of(key, count) == index}
        todo_rows = [m for rows in groups.values() for m in rows]
    items = list(groups.values())
    if plan.shuffle:
        random.Random(0).shuffle(items)
    rounds = max(1, int(plan.rounds))
    per_round = -(-int(repeats) // rounds)
    samples: list[list[float]] = [[] for _ in items]
    ref_samples: list[list[float]] = [[] for _ in items]
    round_levels: list[list[float]] = [[] for _ in items]  # per pass: the item's median relative to the reference
    recheck: list[int] = []
    if plan.recheck and (rounds < 2 or not plan.reference):
        raise ValueError("TimingPlan.recheck needs rounds > 1 and the reference op")
    clock = clock_for(device, lut.threads)
    # A runtime session's run() has a fixed cost (ORT on CPU: ~25 us) that a whole model pays once, not once
    # per term: it is timed beside the items (a graph doing next to nothing) and taken off their samples.
    overhead = lut.runtime != "eager"

    exports = tempfile.TemporaryDirectory(prefix="mdp-profile-") if overhead else None

    def run(module: Any, example: Any, key: Any = None) -> Callable[[], Any]:
        """The item's callable in the LUT's runtime; an item's ONNX is exported in its first round only."""
        onnx_file = Path(exports.name) / f"{key}.onnx" if exports is not None and key is not None else None
        return runner(module, example, lut.runtime, device, lut.dtype, lut.threads, onnx_file)

    # built once (in a runtime, each is an export and a session)
    overhead_call = run(*call_overhead_item()) if overhead and items else None
    reference_call = run(*reference_item(lut.batch)) if plan.reference and items else None
    bar = None
    if progress and items:
        from tqdm import tqdm

        bar = tqdm(total=len(items) * rounds, desc=f"profile {label} on {lut.device}".strip(), unit="timing",
                   leave=False)
    torch.manual_seed(0)
    pending: list[dict[str, Any]] = []
    last_save = time.perf_counter()
    try:
        with threads(lut.threads if device == "cpu" else None):
            for r in range(rounds):
                for lo in range(0, len(items), max(1, int(plan.chunk))):
                    part = range(lo, min(len(items), lo + max(1, int(plan.chunk))))
                    runnable = [run(*build_item(items[k][0], lut.batch), key=k) for k in part]
                    if overhead:
                        runnable.insert(0, overhead_call)
                    if plan.reference:
                        runnable.insert(0, reference_call)
                    timed = sample_calls_round_robin(runnable, device, warmup, per_round)
                    ref = timed.pop(0) if plan.reference else []
                    base = statistics.median(timed.pop(0)) if overhead else 0.0
                    for i, k in enumerate(part):
                        samples[k] += [max(t - base, 0.0) / items[k][0].copies for t in timed[i]]
                        ref_samples[k] += ref
                        round_levels[k].append(_relative_level(samples[k][-len(timed[i]):], ref))
                    del runnable
                    if bar is not None:
                        bar.update(len(part))
                    if log is not None:
                        log(f"round {r + 1}/{rounds}: {part.stop}/{len(items)} timings")
                    if r == rounds - 1:  # rows are complete only once their last round is in
                        done = [k for k in part if not _disturbed(round_levels[k], plan.recheck)]
                        recheck += [k for k in part if k not in done]
                        pending += [_row(m, lut, clock, samples[k], ref_samples[k], warmup)
                                    for k in done for m in items[k]]
                        if time.perf_counter() - last_save > save_every_s:
                            lut.add_rows(pending)
                            pending = []
                            lut.save(last_model=label)
                            last_save = time.perf_counter()
            # One more pass for the items whose passes disagreed (a load spike during one of them).
            for lo in range(0, len(recheck), max(1, int(plan.chunk))):
                part = recheck[lo:lo + max(1, int(plan.chunk))]
                runnable = [run(*build_item(items[k][0], lut.batch), key=k) for k in part]
                if overhead:
                    runnable.insert(0, overhead_call)
                runnable.insert(0, reference_call)
                timed = sample_calls_round_robin(runnable, device, warmup, per_round)
                ref = timed.pop(0)
                base = statistics.median(timed.pop(0)) if overhead else 0.0
                for i, k in enumerate(part):
                    samples[k] += [max(t - base, 0.0) / items[k][0].copies for t in timed[i]]
                    ref_samples[k] += ref
                    pending += [_row(m, lut, clock, samples[k], ref_samples[k], warmup, rechecked=True)
                                for m in items[k]]
                del runnable
                if log is not None:
                    log(f"recheck: {min(lo + len(part), len(recheck))}/{len(recheck)} disturbed timings")
    except BaseException:
        # interrupted (Ctrl-C, an error): keep every row whose timing completed, then let it propagate
        lut.add_rows(pending)
        if pending:
            lut.save(last_model=label)
        raise
    finally:
        if bar is not None:
            bar.close()
        if exports is not None:
            exports.cleanup()
    lut.add_rows(pending)
    if todo_rows or not lut.path.is_file():
        lut.save(last_model=label)
    return {"measured": len(todo_rows), "reused": reused, "configurations": len(wanted), "rechecked": len(recheck),
            "other_shards": len(wanted) - reused - len(todo_rows), "timings": len(items),
            "seconds": time.perf_counter() - start}


def shard_of(timing_key: Hashable, count: int) -> int:
    """The shard (1..count) a timing belongs to: a stable hash of its key (not Python's salted ``hash``)."""
    import hashlib

    digest = hashlib.sha1(repr(timing_key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % int(count) + 1


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 <= i <= n) as ``(i, n)``; ``None`` for no sharding; else a one-line MdpError."""
    from mdp_cli.errors import MdpError

    if text is None or text == "":
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise MdpError(f"--shard {text!r}: expected i/n, e.g. 1/4 (the first of four parts)") from None
    if not 1 <= index <= count:
        raise MdpError(f"--shard {text!r}: i must be between 1 and n (e.g. 1/{max(count, 2)} .. "
                       f"{max(count, 2)}/{max(count, 2)})")
    return index, count


def build_item(m: Measurement, batch: int) -> tuple[Any, Any]:
    """(module, input) for one timing: a chain of ``copies`` distinct modules when asked."""
    import torch

    from mdp_cli.modules.chain import MultiInputChain

    build = get_op(m.op)
    module, x = build(m.context, m.sizes, batch)
    if m.copies > 1:
        rest = [build(m.context, m.sizes, batch)[0] for _ in range(m.copies - 1)]
        module = MultiInputChain([module, *rest], x) if isinstance(x, (tuple, list)) else torch.nn.Sequential(module, *rest)
    return module, x


def _relative_level(samples: list[float], ref: list[float]) -> float:
    """Median of the item's samples, each divided by the reference sample of the same round (NaN without)."""
    if not ref or len(ref) != len(samples):
        return float("nan")
    return statistics.median(t / r for t, r in zip(samples, ref) if r > 0) if any(r > 0 for r in ref) else float("nan")


def _disturbed(levels: list[float], threshold: float) -> bool:
    """Whether the passes of an item disagree by more than ``threshold`` (relative to the reference)."""
    finite = [v for v in levels if v == v and v > 0]
    return bool(threshold) and len(finite) > 1 and max(finite) / min(finite) - 1 > threshold


def _row(m: Measurement, lut: Lut, clock: str, samples: list[float], ref: list[float], warmup: int,
         rechecked: bool = False) -> dict[str, Any]:
    from mdp_cli.latency.timing import summarize

    median, spread, p10 = summarize(samples)
    return {"op": m.op, "signature": m.signature, "sizes": m.sizes_key, "device": lut.device, "dtype": lut.dtype,
            "batch": lut.batch, "threads": lut.threads, "clock": clock, "median_ms": median, "spread_ms": spread,
            "p10_ms": p10, "ref_ms": summarize(ref)[0] if ref else float("nan"), "repeats": len(samples),
            "warmup": warmup, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "runtime": lut.runtime, "ref_ratio": _relative_level(samples, ref), "rechecked": int(rechecked)}
