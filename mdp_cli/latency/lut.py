"""Latency lookup tables (LUT): one CSV per (device, dtype, batch, threads), shared by every model.

Columns: op, signature (model-independent op identity: op kind + fixed context, see
``SpaceTerm.signature``), sizes ("cin=64;cout=128", the sizes of the term's dims by role; empty for a
fixed part), device (hardware name), dtype, batch, threads, clock (thread_cpu: the timing thread's CPU
time, used on CPU with one thread; wall; cuda_event), median_ms, spread_ms (inter-quartile range),
p10_ms (10th percentile), ref_ms (median of a fixed reference op timed in the same rounds: a load
indicator, see latency/timing.py), repeats, warmup, created, runtime (eager, onnxruntime, tensorrt: what the
rows were timed in, ``latency/runtimes.py``; a file written before the column has eager rows). Lookups read ``median_ms`` by default or
``p10_ms`` (``stat="p10"``: for an oversubscribed CPU, where medians of long calls include preemptions). A JSON sidecar (``<name>.json``, schema ``mdp.lut``) holds the provenance.
The runtime is part of the LUT's identity: its file name (``lut_filename``, eager keeping the name it
always had) and the sidecar's provenance (runtime and its version). Rows are keyed by (signature, sizes): a row measured for one model is reused for any other model with the
same op (the paper's LUT reuse). Reading checks that every row belongs to the requested device, dtype,
batch, thread count and runtime; a mismatch is an error, never a silent reuse. A (signature, sizes) key appears
once: a file listing it twice with different latencies is refused (``read_rows``).

Several processes may profile into one LUT at once: ``save`` merges with the rows on disk under an
exclusive lock (``<csv>.lock``), so no process's rows are lost. A measured row is overwritten only by
``replace_rows`` (``mdp run --refine``, docs/refine.md), under the same lock, and the sidecar says so.

Missing rows: a table is interpolated only between the points of a profiling grid (``grid > 1``, every
grid-th option and the last one measured). ``require_rows`` refuses a LUT that lacks a row the space needs
(grid 1) or a grid point (grid > 1), naming the op and the sizes, before any table is built.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from mdp_cli.artifacts import atomic_path, provenance, read_json, write_json
from mdp_cli.errors import MdpError, SchemaError

SCHEMA = "mdp.lut"
VERSION = 1
COLUMNS = ["op", "signature", "sizes", "device", "dtype", "batch", "threads", "clock", "median_ms", "spread_ms",
           "p10_ms", "ref_ms", "repeats", "warmup", "created"]


def sizes_key(roles: Sequence[str], sizes: Sequence[int]) -> str:
    return ";".join(f"{r}={int(s)}" for r, s in zip(roles, sizes))


# The runtime column came after the others: a LUT written before it has none and was measured in eager PyTorch.
RUNTIME_COLUMN = "runtime"
DEFAULT_RUNTIME = "eager"


def lut_filename(device: str, dtype: str, batch: int, threads: int, runtime: str = DEFAULT_RUNTIME) -> str:
    """``<device>__<dtype>__b<batch>__t<threads>[__<runtime>].csv``: eager keeps the name it always had."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() or "device"
    suffix = "" if runtime == DEFAULT_RUNTIME else f"__{runtime}"
    return f"{slug}__{dtype}__b{batch}__t{threads}{suffix}.csv"


# Columns that came later still: ``ref_ratio`` (the row's median relative to the reference op timed in the same
# rounds, sample by sample: what ``stat="ref"`` reads) and ``rechecked`` (1 when the row's passes disagreed and
# it was timed once more). Rows from before them have none (NaN / 0).
LATER_COLUMNS = {"ref_ratio": float("nan"), "rechecked": 0}
ALL_COLUMNS = [*COLUMNS, RUNTIME_COLUMN, *LATER_COLUMNS]
STATS = ("median", "p10", "ref")


def _with_runtime(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a runtime on every row (rows from before the column: eager) and the later columns."""
    if RUNTIME_COLUMN not in frame.columns:
        frame[RUNTIME_COLUMN] = DEFAULT_RUNTIME
    values = frame[RUNTIME_COLUMN].astype(object)
    frame[RUNTIME_COLUMN] = values.where(values.notna() & (values.astype(str) != ""), DEFAULT_RUNTIME).astype(str)
    for column, default in LATER_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = default
        frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(default)
    return frame


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path`` for the duration of the block: writers of one LUT
    take turns. The lock file stays (deleting it would race with a process waiting on it)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent profiling guarantee, but still atomic writes
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_rows(path: str | Path) -> pd.DataFrame:
    """The rows of a LUT CSV, validated: every column present, latencies finite and non-negative, each
    (signature, sizes) once. A key listed twice with the same latencies is kept once (first row); listed
    twice with different latencies it is an error: which measurement is right cannot be told."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"sizes": str, "signature": str})
    except Exception as exc:
        raise SchemaError(f"{path}: not a readable LUT CSV ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
                          "delete it and re-profile (mdp profile)") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: LUT is missing columns {missing}")
    for column in ("median_ms", "p10_ms"):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values < 0)
        if len(frame) and bad.any():
            row = int(np.argmax(bad))
            raise SchemaError(f"{path}: column {column} row {row + 2} holds a NaN, negative or non-numeric "
                              "latency; re-profile (mdp profile)")
        frame[column] = values
    for column in ("signature", "sizes"):
        frame[column] = frame[column].astype(str)
    keys = frame["signature"] + "\x00" + frame["sizes"]
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        for _, rows in frame[repeated].groupby(keys[repeated], sort=False):
            first = rows.iloc[0]
            for line, row in rows.iloc[1:].iterrows():
                if (row["median_ms"], row["p10_ms"]) != (first["median_ms"], first["p10_ms"]):
                    raise SchemaError(
                        f"{path}: rows {rows.index[0] + 2} and {line + 2} both measure {first['op']} at "
                        f"{first['sizes'] or '(fixed)'} with different latencies ({first['median_ms']:g} vs "
                        f"{row['median_ms']:g} ms); delete one of them (or the file, and re-profile)")
        frame = frame[~keys.duplicated(keep="first")].reset_index(drop=True)
    return _with_runtime(frame)


class Lut:
    """In-memory LUT for one device/dtype/batch/threads/runtime; ``path`` is its CSV."""

    def __init__(self, path: str | Path, device: str, dtype: str, batch: int, threads: int,
                 frame: pd.DataFrame | None = None, stat: str = "median", runtime: str = DEFAULT_RUNTIME):
        if stat not in STATS:
            raise MdpError(f"unknown latency statistic {stat!r} (use one of {', '.join(STATS)})")
        self.stat = stat
        self.path = Path(path)
        self.device, self.dtype, self.batch, self.threads = device, dtype, int(batch), int(threads)
        self.runtime = runtime
        self.frame = _with_runtime(frame) if frame is not None else pd.DataFrame(columns=ALL_COLUMNS)
        self._index: dict[tuple[str, str], float] = {}
        self._reindex()

    def _reindex(self) -> None:
        f = self.frame
        if not len(f):
            self._index = {}
            return
        sizes = f["sizes"].fillna("").astype(str)
        value = self.values()
        self._index = dict(zip(zip(f["signature"].astype(str), sizes), value))

    def values(self) -> pd.Series:
        """The latency (ms) of every row under this LUT's statistic.

        ``ref``: the row's ``ref_ratio`` times one scale for the whole table, the median reference time
        over its rows; so a row timed while the machine ran slow (the reference ran slow beside it) is
        scaled back like every other, and a drift during profiling no longer tilts the table. Rows without
        a ratio (older LUTs, no reference) keep their median."""
        f = self.frame
        if self.stat == "p10":
            return f["p10_ms"].astype(float)
        median = f["median_ms"].astype(float)
        if self.stat == "median":
            return median
        ratio = pd.to_numeric(f["ref_ratio"], errors="coerce").astype(float)
        ref = pd.to_numeric(f["ref_ms"], errors="coerce").astype(float)
        usable = np.isfinite(ratio) & np.isfinite(ref) & (ref > 0)
        if not usable.any():
            return median
        scale = float(ref[usable].median())
        return median.where(~usable, ratio * scale)

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, device: str, dtype: str, batch: int, threads: int, create: bool = True,
             stat: str = "median", runtime: str = DEFAULT_RUNTIME) -> "Lut":
        """Open (or start) a LUT, refusing rows that belong to another device/dtype/batch/threads/runtime."""
        path = Path(path)
        if not path.is_file():
            if not create:
                raise MdpError(f"{path}: no such LUT; run 'mdp profile' first")
            return cls(path, device, dtype, batch, threads, stat=stat, runtime=runtime)
        lut = cls(path, device, dtype, batch, threads, read_rows(path), stat=stat, runtime=runtime)
        lut.check(device, dtype, batch, threads, runtime)
        return lut

    def check(self, device: str, dtype: str, batch: int, threads: int, runtime: str | None = None) -> None:
        """Refuse, in one line, rows measured for another device, dtype, batch, threads, clock or runtime
        (``runtime`` None: this LUT's own)."""
        from mdp_cli.latency.timing import clock_for

        f = self.frame
        if not len(f):
            return
        runtime = self.runtime if runtime is None else runtime
        clock = clock_for("cuda" if "cuda" in str(f["clock"].iloc[0]) else "cpu", threads)
        for column, want in (("runtime", runtime), ("device", device), ("dtype", dtype), ("batch", batch),
                             ("threads", threads), ("clock", clock)):
            found = sorted({str(v) for v in f[column]})
            if found != [str(want)]:
                raise SchemaError(
                    f"{self.path}: LUT was measured for {column}={','.join(found)} but {column}={want} was asked; "
                    f"profile for this {column} (mdp profile) instead of reusing another one's LUT")

    def get(self, signature: str, sizes: str) -> float | None:
        return self._index.get((signature, sizes))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self.frame)

    # -- writing ------------------------------------------------------------------------------------------
    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        new = _with_runtime(pd.DataFrame(rows, columns=ALL_COLUMNS))
        self.frame = new if not len(self.frame) else pd.concat([self.frame, new], ignore_index=True)
        self.frame = self.frame.drop_duplicates(["signature", "sizes"], keep="last").reset_index(drop=True)
        self._reindex()

    def save(self, **provenance_fields: Any) -> None:
        """Write the LUT, merged with the rows on disk: other processes profiling into the same file (a
        second ``mdp profile``) may have added rows since this one was opened. The merge and the write
        happen under an exclusive lock on ``<csv>.lock``, so no row is ever lost; for a row both hold, this
        process's measurement wins (either is a valid measurement of the same configuration)."""
        for value in self.frame["median_ms"]:
            if not np.isfinite(float(value)):
                raise MdpError(f"{self.path}: refusing to write a non-finite latency")
        self._write_merged(lambda: None, provenance_fields)

    def replace_rows(self, rows: pd.DataFrame, **provenance_fields: Any) -> int:
        """Overwrite the rows at the (signature, sizes) keys of ``rows`` with ``rows``: the one deliberate way
        a measured row is replaced (``mdp run --refine`` re-measures the rows of a configuration whose whole
        model disagreed with the table). Under the lock, as in ``save``, the file's rows are merged in, then
        the given keys replaced and the file rewritten atomically; the sidecar records ``replaced_rows`` and
        ``provenance_fields``, each replaced row its new ``created`` time. Returns how many keys were held
        before (the rest are added)."""
        new = _with_runtime(pd.DataFrame(rows).reindex(columns=ALL_COLUMNS).reset_index(drop=True))
        Lut(self.path, self.device, self.dtype, self.batch, self.threads, new, runtime=self.runtime).check(
            self.device, self.dtype, self.batch, self.threads, self.runtime)
        if not np.isfinite(new["median_ms"].astype(float)).all():
            raise MdpError(f"{self.path}: refusing to write a non-finite latency")
        keys = set(zip(new["signature"].astype(str), new["sizes"].fillna("").astype(str)))
        replaced: list[int] = []

        def replace() -> dict[str, Any]:
            held = [key in keys for key in zip(self.frame["signature"].astype(str),
                                                 self.frame["sizes"].fillna("").astype(str))]
            kept = self.frame[[not h for h in held]]
            self.frame = new if not len(kept) else pd.concat([kept, new], ignore_index=True)
            self._reindex()
            replaced.append(int(sum(held)))
            return {"replaced_rows": replaced[0]}

        self._write_merged(replace, provenance_fields)
        return replaced[0]

    def _write_merged(self, edit: Any, provenance_fields: Mapping[str, Any]) -> None:
        """Under the LUT's lock: merge in the rows another process wrote since, apply ``edit`` (which may
        return extra provenance), then write the CSV atomically and the sidecar."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            if self.path.is_file():
                on_disk = Lut(self.path, self.device, self.dtype, self.batch, self.threads, read_rows(self.path),
                              runtime=self.runtime)
                on_disk.check(self.device, self.dtype, self.batch, self.threads, self.runtime)
                self._merge_missing(on_disk.frame)
            extra = edit() or {}
            with atomic_path(self.path) as tmp:
                self.frame.to_csv(tmp, index=False)
            write_json(self.sidecar, {
                "schema": SCHEMA, "version": VERSION,
                "provenance": provenance(device=self.device, dtype=self.dtype, batch=self.batch,
                                         threads=self.threads, runtime=self.runtime,
                                         runtime_version=runtime_version(self.runtime), rows=len(self.frame),
                                         **extra, **provenance_fields),
                "csv": self.path.name,
            })

    def _merge_missing(self, other: pd.DataFrame) -> None:
        """Append the rows of ``other`` whose (signature, sizes) this LUT lacks."""
        if not len(other):
            return
        keys = set(zip(self.frame["signature"].astype(str), self.frame["sizes"].fillna("").astype(str)))
        theirs = list(zip(other["signature"].astype(str), other["sizes"].fillna("").astype(str)))
        extra = other[[key not in keys for key in theirs]]
        if len(extra):
            self.frame = extra.reset_index(drop=True) if not len(self.frame) else pd.concat(
                [self.frame, extra], ignore_index=True)
            self._reindex()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


def runtime_version(runtime: str) -> str:
    from mdp_cli.latency.runtimes import runtime_version as version

    return version(runtime)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    return read_json(Path(path).with_suffix(".json"), SCHEMA, VERSION)


# ---------------------------------------------------------------------------------------------------------
# Grids and interpolation
# ---------------------------------------------------------------------------------------------------------


def grid_indices(count: int, grid: int) -> list[int]:
    """Option indices measured when only every ``grid``-th option is profiled (always the first and last)."""
    if grid <= 1 or count <= 2:
        return list(range(count))
    idx = list(range(0, count, grid))
    if idx[-1] != count - 1:
        idx.append(count - 1)
    return idx


def fill_by_interpolation(table: np.ndarray, axes_sizes: Sequence[Sequence[int]]) -> np.ndarray:
    """Fill NaN cells of a table measured on a rectilinear sub-grid: linear along each axis in turn
    (multi-linear overall), in the dims' sizes. Cells that stay unknown raise."""
    table = np.array(table, dtype=float)
    for axis, sizes in enumerate(axes_sizes):
        x = np.asarray(sizes, dtype=float)
        moved = np.moveaxis(table, axis, -1)
        lines = moved.reshape(-1, moved.shape[-1])
        for line in lines:
            known = np.isfinite(line)
            if known.sum() >= 1 and not known.all():
                line[~known] = np.interp(x[~known], x[known], line[known])
        table = np.moveaxis(lines.reshape(moved.shape), -1, axis)
    return table


def term_table(lut: Lut, signature: str, roles: Sequence[str], options: Sequence[Sequence[int]],
               interpolate: bool = True) -> np.ndarray:
    """The term's latency table over its dims' options, from measured rows (interpolated in between when
    ``interpolate``: only for a LUT profiled on a grid, after ``require_rows`` checked the grid points)."""
    shape = tuple(len(o) for o in options)
    table = np.full(shape, np.nan)
    for idx in np.ndindex(*shape) if shape else [()]:
        value = lut.get(signature, sizes_key(roles, [options[d][i] for d, i in enumerate(idx)]))
        if value is not None:
            table[idx] = value
    if np.isnan(table).any() and interpolate and shape:
        table = fill_by_interpolation(table, options)
    if np.isnan(table).any():
        missing = [sizes_key(roles, [options[d][i] for d, i in enumerate(idx)])
                   for idx in zip(*np.nonzero(np.isnan(table)))]
        raise MdpError(f"{lut.path}: op {signature.split('{')[0]} is not measured at {len(missing)} sizes "
                       f"({_first(missing)}); run 'mdp profile' for this model (and the same --step/--grid)")
    return table


def missing_rows(lut: Lut, signature: str, roles: Sequence[str], options: Sequence[Sequence[int]],
                 grid: int = 1) -> list[str]:
    """The sizes keys a table over ``options`` needs measured: every combination for ``grid <= 1``, the
    grid's points (``grid_indices`` per dim, as ``mdp profile --grid`` measures them) otherwise."""
    picks = [[o[i] for i in grid_indices(len(o), grid)] for o in options]
    keys = [sizes_key(roles, combo) for combo in itertools.product(*picks)]
    return [key for key in keys if (signature, key) not in lut]


def require_rows(lut: Lut, space: Any, grid: int = 1) -> None:
    """Refuse, in one line, a LUT that lacks rows ``space`` (a ``PruningSpace``: ``terms``, ``dim()``)
    needs: with ``grid`` 1 nothing may be interpolated, so every option combination of every term must be
    measured; with ``grid`` > 1 every grid point must be, and the rest is interpolated between them."""
    grid = int(grid)
    for term in space.terms:
        options = [space.dim(d).options for d in term.dims]
        signature = term.signature()
        missing = missing_rows(lut, signature, term.roles, options, grid)
        if not missing:
            continue
        needed = math.prod(len(grid_indices(len(o), grid)) for o in options)
        how = ("the LUT must hold every size the space allows (grid 1: nothing is interpolated)" if grid <= 1
               else f"the grid-{grid} points must be measured to interpolate between them")
        raise MdpError(f"{lut.path}: op {term.op} of term {term.name} lacks {len(missing)} of {needed} rows "
                       f"({_first(missing)}); {how}; run 'mdp profile' for this model with the same "
                       f"--step/--max-options/--grid")


def _first(keys: Sequence[str], shown: int = 3) -> str:
    text = ", ".join(k or "(fixed part)" for k in keys[:shown])
    return text + (f", ... {len(keys) - shown} more" if len(keys) > shown else "")


def lut_summary(path: str | Path) -> Mapping[str, Any]:
    frame = pd.read_csv(path, keep_default_na=False)
    return {"rows": len(frame), "signatures": frame["signature"].nunique()}
