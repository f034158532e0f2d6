"""Timing a callable the same way everywhere (profiling, export report, tests, bench).

CPU: a fixed number of intra-op threads (default 1; more threads on a shared machine spin-wait and
explode the variance), ``perf_counter`` around each call. CUDA: CUDA events around each call and a
synchronisation before reading them. Always warm-up calls first, then the median of ``repeats`` samples
and the inter-quartile range as the spread.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mdp_cli.errors import MdpError
from mdp_cli.latency.allocator import steady_allocator

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise MdpError(f"unknown dtype {name!r} (use one of {sorted(DTYPES)})") from None


def canonical_dtype(name: str) -> str:
    return str(torch_dtype(name)).removeprefix("torch.")


def check_device(device: str) -> str:
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MdpError(f"device {device!r} requested but CUDA is not available on this machine")
        return device
    raise MdpError(f"unknown device {device!r} (use cpu or cuda[:N])")


def device_name(device: str) -> str:
    """A stable, human-readable name of the hardware (what a LUT belongs to)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name or platform.processor() or platform.machine() or "cpu"


CLOCK = "auto"  # auto | wall | thread


def cpu_clock() -> Callable[[], float]:
    """The clock for CPU timing: with one intra-op thread the op runs in the calling thread, so that
    thread's CPU time (``time.thread_time``) is its latency minus the time the OS gave the core to other
    processes; on a shared, oversubscribed machine wall-clock medians of long calls (a whole network)
    include preemptions that short calls (one op) escape, which biased sum-of-parts predictions by 2x
    here. With more threads the work runs in pool threads and only the wall clock is meaningful."""
    steady_allocator()  # every CPU timing takes its clock here: the heap is made steady first
    if CLOCK == "thread" or (CLOCK == "auto" and torch.get_num_threads() == 1):
        return time.thread_time
    return time.perf_counter


def clock_for(device: str, num_threads: int) -> str:
    """Name of the clock used for a device and thread count (recorded in, and checked against, LUTs)."""
    if device.startswith("cuda"):
        return "cuda_event"
    if CLOCK == "thread" or (CLOCK == "auto" and num_threads == 1):
        return "thread_cpu"
    return "wall"


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_callable(fn: Callable[[], Any], device: str = "cpu", warmup: int = 10, repeats: int = 30) -> tuple[float, float, list[float]]:
    """Median and IQR (ms) of ``repeats`` calls after ``warmup`` calls, plus the samples."""
    samples: list[float] = []
    with torch.inference_mode():
        if device.startswith("cuda"):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                samples.append(start.elapsed_time(end))
        else:
            clock = cpu_clock()
            for _ in range(warmup):
                fn()
            for _ in range(repeats):
                t0 = clock()
                fn()
                samples.append((clock() - t0) * 1e3)
    return statistics.median(samples), _iqr(samples), samples


def _p10(samples: list[float]) -> float:
    """10th percentile: on an oversubscribed CPU the median of a long call includes preemptions that
    short calls escape; the low percentile of both is what the hardware does when it gets the core."""
    ordered = sorted(samples)
    return ordered[max(0, int(round(0.1 * len(ordered))) - 1)]


def _iqr(samples: list[float]) -> float:
    if len(samples) < 4:
        return max(samples) - min(samples)
    q = statistics.quantiles(samples, n=4)
    return q[2] - q[0]


def time_module(module: torch.nn.Module, example: Any, device: str = "cpu", dtype: str = "float32",
                warmup: int = 10, repeats: int = 30) -> tuple[float, float]:
    """Median and IQR latency (ms) of ``module(example)`` on ``device`` in ``dtype``."""
    td = torch_dtype(dtype)
    module = module.to(device=device, dtype=td).eval()
    if isinstance(example, (tuple, list)):
        example = tuple(t.to(device=device, dtype=td) for t in example)
        fn = lambda: module(example)  # noqa: E731  (ops taking a pair, e.g. add)
    else:
        example = example.to(device=device, dtype=td)
        fn = lambda: module(example)  # noqa: E731
    median, spread, _ = time_callable(fn, device, warmup, repeats)
    return median, spread


def sample_round_robin(items: list[tuple[Any, Any]], device: str = "cpu", dtype: str = "float32",
                       warmup: int = 10, repeats: int = 30, runtime: str = "eager",
                       num_threads: int = 1) -> list[list[float]]:
    """Times (ms) of ``repeats`` calls of each (module, input) when the modules take turns, one call each per
    round, after ``warmup`` rounds; each run in ``runtime`` (``latency/runtimes.py``: eager, onnxruntime with
    ``num_threads`` intra-op threads, tensorrt).

    Timing one small op many times in a row keeps its weights and input hot in cache and underestimates
    what it costs inside a network, where other ops run in between (measured here: sum of back-to-back
    medians 35 % below the network, round-robin within a few %). Round-robin reproduces that context.
    """
    from mdp_cli.latency.runtimes import runner

    calls = [runner(module, example, runtime, device, dtype, num_threads) for module, example in items]
    return sample_calls_round_robin(calls, device, warmup, repeats)


def sample_calls_round_robin(calls: list[Callable[[], Any]], device: str = "cpu", warmup: int = 10,
                             repeats: int = 30) -> list[list[float]]:
    """``sample_round_robin`` over callables (each runs one inference, in whatever runtime): the one loop."""
    samples: list[list[float]] = [[] for _ in calls]
    cuda = device.startswith("cuda")
    clock = cpu_clock()
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls:
                call()
        if cuda:
            torch.cuda.synchronize(device)
        for _ in range(repeats):
            for k, call in enumerate(calls):
                samples[k].append(_call_ms(call, device, clock))
    return samples


def summarize(samples: list[float]) -> tuple[float, float, float]:
    """Median, inter-quartile range and 10th percentile (ms) of samples: every LUT row and report uses these."""
    return statistics.median(samples), _iqr(samples), _p10(samples)


def time_round_robin(items: list[tuple[Any, Any]], device: str = "cpu", dtype: str = "float32",
                     warmup: int = 10, repeats: int = 30, runtime: str = "eager",
                     num_threads: int = 1) -> list[tuple[float, float, float]]:
    """``summarize`` of each item's ``sample_round_robin`` samples."""
    return [summarize(s) for s in sample_round_robin(items, device, dtype, warmup, repeats, runtime, num_threads)]


def _call_ms(call: Callable[[], Any], device: str, clock: Callable[[], float]) -> float:
    """One timed call in ms: CUDA events and a synchronisation on GPU, else ``clock``."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = clock()
    call()
    return 1000.0 * (clock() - t0)


def sample_in_turns(module: torch.nn.Module, x: Any, ref: torch.nn.Module | None, x_ref: Any,
                    warmup: int = 10, samples: int = 30, device: str = "cpu", per_turn: int = 1,
                    settle: int = 1) -> tuple[list[float], list[float]]:
    """Times (ms) of ``samples`` calls of ``module(x)`` and as many of ``ref(x_ref)``, taking turns.

    On a shared machine absolute times drift by 10-40 % over minutes while the ratio of two models
    timed in turns stays within a few percent (measured: ±6 % under a load of 3 on 2 cores, against
    ±40 % for separately timed medians). Each turn is ``settle`` untimed calls and then ``per_turn``
    timed ones, so that a timed call follows a call of the same model, as it does when deployed, and
    not the other model's pass through the caches. That matters for small networks: heavily pruned
    MobileNetV2s at 64 px measured 6 % (median) and ResNet-50's smallest up to 15 % less of dense this way
    than called alternately with dense (docs/latency.md §1 item 9). One timed call per turn keeps the two
    models' samples seconds apart at most, so a disturbance of the machine hits both: with five per turn
    (and two to settle) the same measurement repeated 2.3 % apart (median) instead of 1.0 %.
    """
    module = module.to(device).eval()
    x = x.to(device)
    call = lambda: module(x)  # noqa: E731
    ref_call = None
    if ref is not None:
        ref = ref.to(device).eval()
        x_ref = x_ref.to(device)
        ref_call = lambda: ref(x_ref)  # noqa: E731
    return sample_calls_in_turns(call, ref_call, warmup, samples, device, per_turn, settle)


def sample_calls_in_turns(call: Callable[[], Any], ref_call: Callable[[], Any] | None, warmup: int = 10,
                          samples: int = 30, device: str = "cpu", per_turn: int = 1,
                          settle: int = 1) -> tuple[list[float], list[float]]:
    """``sample_in_turns`` over callables (any runtime, ``latency/runtimes.runner``): the one loop."""
    cuda = device.startswith("cuda")
    clock = cpu_clock()
    per_turn = max(1, int(per_turn))

    def turn(fn, n, out):
        for _ in range(settle):
            fn()
        if cuda:
            torch.cuda.synchronize()
        for _ in range(n):
            out.append(_call_ms(fn, device, clock))

    times: list[float] = []
    ref_times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            call()
            if ref_call is not None:
                ref_call()
        while len(times) < samples:
            n = min(per_turn, samples - len(times))
            turn(call, n, times)
            if ref_call is not None:
                turn(ref_call, n, ref_times)
    return times, ref_times


def measure_in_turns(module: torch.nn.Module, x: Any, ref: torch.nn.Module | None, x_ref: Any,
                     warmup: int = 10, samples: int = 30, device: str = "cpu", per_turn: int = 1,
                     settle: int = 1) -> tuple[float, float | None]:
    """Median times (ms) of ``module(x)`` and of ``ref(x_ref)`` timed in turns with it (``sample_in_turns``)."""
    times, ref_times = sample_in_turns(module, x, ref, x_ref, warmup, samples, device, per_turn, settle)
    return statistics.median(times), (statistics.median(ref_times) if ref_times else None)


def reference_item(batch: int = 1) -> tuple[Any, Any]:
    """A fixed small workload timed beside everything else (conv3x3 32->32 + BN + ReLU at 16x16).

    On a shared machine the speed of the CPU seen by one process drifts with the other processes' load.
    The LUT records it per profiling round (``ref_ms``) as a load indicator: a LUT whose ref_ms varies
    a lot was measured on a busy machine. (Dividing by it does not cancel load: the reference itself
    runs slower beside a whole network than beside small ops, from cache effects.)"""
    from torch import nn

    torch.manual_seed(1234)
    module = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()).eval()
    return module, torch.randn(batch, 32, 16, 16)


def time_against_reference(module: torch.nn.Module, example: Any, device: str = "cpu", dtype: str = "float32",
                           warmup: int = 10, repeats: int = 30) -> dict[str, float]:
    """Time ``module`` and the reference in turns: raw median, spread and the reference's median (ms)."""
    (ref_ms, _, _), (median, spread, p10) = time_round_robin([reference_item(), (module, example)], device, dtype,
                                                     warmup, repeats)
    return {"median_ms": median, "spread_ms": spread, "p10_ms": p10, "ref_ms": ref_ms}

