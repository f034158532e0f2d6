"""Grid profiling: every term of a space measured on every ``grid``-th option of each of its dims.

The plan the CNN family uses (``grid_measurements``) and a library entry point that profiles a space into
a LUT file with it (``profile_space``); the timing loop is the one engine of ``latency/engine.py``.
Configurations are deduplicated by (signature, sizes) across terms and across models already in the LUT,
so identical convs (same kernel, stride, feature map) are measured once. With ``grid > 1`` only every
grid-th option of each dim (plus the first and last) is measured and the problem builder interpolates in
between.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping

from mdp_cli.latency.engine import Measurement, TimingPlan, profile_into_lut
from mdp_cli.latency.lut import Lut, grid_indices, lut_filename, sizes_key
from mdp_cli.space.core import PruningSpace

# Up to 24 ops take turns with a reference op, in two passes over all of them; a row whose passes disagree by
# more than 20 % (relative to the reference) gets a third (docs/latency.md). Rows are saved as they complete.
GRID_TIMING = TimingPlan(chunk=24, rounds=2, reference=True, shuffle=True, recheck=0.20)
# Ops profiled as chains of distinct copies (op -> copies): see docs/latency.md.
CHAIN_COPIES: dict[str, int] = {}


def grid_measurements(space: PruningSpace, grid: int = 1, chain: Mapping[str, int] | None = None) -> list[Measurement]:
    """One row per term and combination of its dims' grid options (duplicates across terms included: the
    engine measures each (signature, sizes) once). ``chain``: op -> copies, ops timed as a chain of that
    many distinct copies (``Measurement.copies``)."""
    chain = dict(CHAIN_COPIES if chain is None else chain)
    out = []
    for term in space.terms:
        picks = [[dim.options[i] for i in grid_indices(len(dim.options), int(grid or 1))]
                 for dim in (space.dim(d) for d in term.dims)]
        signature = term.signature()
        for combo in itertools.product(*picks) if picks else [()]:
            out.append(Measurement(term.op, signature, sizes_key(term.roles, combo), term.context,
                                   dict(zip(term.roles, combo)), copies=int(chain.get(term.op, 1))))
    return out


def configurations(space: PruningSpace, grid: int = 1) -> list[tuple[str, str, tuple[str, ...], dict, dict]]:
    """Unique (op, signature, roles, context, sizes-by-role) to measure for the space."""
    roles = {t.signature(): t.roles for t in space.terms}
    seen: dict[tuple[str, str], tuple] = {}
    for m in grid_measurements(space, grid):
        seen.setdefault(m.key, (m.op, m.signature, roles[m.signature], m.context, m.sizes))
    return list(seen.values())


def profile_space(space: PruningSpace, device: str = "cpu", dtype: str = "float32", batch: int = 1,
                  lut_dir: str | Path = "luts", lut_path: str | Path | None = None, warmup: int = 10,
                  repeats: int = 30, grid: int = 1, num_threads: int = 1, progress: bool = True,
                  plan: TimingPlan = GRID_TIMING, chain: Mapping[str, int] | None = None,
                  runtime: str = "eager") -> dict[str, Any]:
    """Measure what the LUT lacks for ``space`` (the ops of its terms must be registered, e.g. by importing
    ``mdp_cli.latency.cnn_ops``) in ``runtime`` (``latency/runtimes.py``); returns a summary (lut, measured,
    reused, configurations, seconds, ...)."""
    from mdp_cli.latency.runtimes import check_runtime
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name

    device = check_device(device)
    dtype = canonical_dtype(dtype)
    hw = device_name(device)
    runtime = check_runtime(runtime, device, dtype)
    path = Path(lut_path) if lut_path else Path(lut_dir) / lut_filename(hw, dtype, batch, num_threads, runtime)
    lut = Lut.open(path, hw, dtype, batch, num_threads, runtime=runtime)
    summary = profile_into_lut(lut, grid_measurements(space, grid, chain), plan, device, warmup, repeats,
                               label=space.model_name, progress=progress)
    return {"lut": str(path), **summary, "device": hw, "dtype": dtype, "batch": batch, "threads": num_threads,
            "runtime": runtime}
