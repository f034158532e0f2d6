"""Latency lookup tables (LUT): one CSV per (device, dtype, batch, threads), shared by every model.

Columns: op, signature (model-independent op identity: op kind + fixed context, see
``SpaceTerm.signature``), sizes ("cin=64;cout=128", the sizes of the term's dims by role; empty for a
fixed part), device (hardware name), dtype, batch, threads, clock (thread_cpu: the timing thread's CPU
time, used on CPU with one thread; wall; cuda_event), median_ms, spread_ms (inter-quartile range),
p10_ms (10th percentile), ref_ms (median of a fixed reference op timed in the same rounds: a load
indicator, see latency/timing.py), repeats, warmup, created. Lookups read ``median_ms`` by default or
``p10_ms`` (``stat="p10"``: for an oversubscribed CPU, where medians of long calls include preemptions). A JSON sidecar (``<name>.json``, schema ``mdp.lut``) holds the provenance.
Rows are keyed by (signature, sizes): a row measured for one model is reused for any other model with the
same op (the paper's LUT reuse). Reading checks that every row belongs to the requested device, dtype,
batch and thread count; a mismatch is an error, never a silent reuse.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

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


def lut_filename(device: str, dtype: str, batch: int, threads: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower() or "device"
    return f"{slug}__{dtype}__b{batch}__t{threads}.csv"


class Lut:
    """In-memory LUT for one device/dtype/batch/threads; ``path`` is its CSV."""

    def __init__(self, path: str | Path, device: str, dtype: str, batch: int, threads: int,
                 frame: pd.DataFrame | None = None, stat: str = "median"):
        if stat not in ("median", "p10"):
            raise MdpError(f"unknown latency statistic {stat!r} (use median or p10)")
        self.stat = stat
        self.path = Path(path)
        self.device, self.dtype, self.batch, self.threads = device, dtype, int(batch), int(threads)
        self.frame = frame if frame is not None else pd.DataFrame(columns=COLUMNS)
        self._index: dict[tuple[str, str], float] = {}
        self._reindex()

    def _reindex(self) -> None:
        f = self.frame
        if not len(f):
            self._index = {}
            return
        sizes = f["sizes"].fillna("").astype(str)
        value = f["median_ms" if self.stat == "median" else "p10_ms"].astype(float)
        self._index = dict(zip(zip(f["signature"].astype(str), sizes), value))

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, device: str, dtype: str, batch: int, threads: int, create: bool = True,
             stat: str = "median") -> "Lut":
        """Open (or start) a LUT, refusing rows that belong to another device/dtype/batch/threads."""
        path = Path(path)
        if not path.is_file():
            if not create:
                raise MdpError(f"{path}: no such LUT; run 'mdp profile' first")
            return cls(path, device, dtype, batch, threads, stat=stat)
        try:
            frame = pd.read_csv(path, keep_default_na=False, dtype={"sizes": str, "signature": str})
        except Exception as exc:
            raise SchemaError(f"{path}: not a readable LUT CSV ({str(exc).splitlines()[0]})") from None
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise SchemaError(f"{path}: LUT is missing columns {missing}")
        for column in ("median_ms", "p10_ms"):
            values = pd.to_numeric(frame[column], errors="coerce")
            if len(frame) and (values.isna().any() or (values < 0).any() or not np.isfinite(values).all()):
                row = int(np.argmax(~np.isfinite(values.to_numpy(dtype=float)) | (values.to_numpy(dtype=float) < 0)))
                raise SchemaError(f"{path}: column {column} row {row + 2} holds a NaN, negative or non-numeric "
                                  "latency; re-profile (mdp profile)")
            frame[column] = values.astype(float)
        lut = cls(path, device, dtype, batch, threads, frame, stat=stat)
        lut.check(device, dtype, batch, threads)
        return lut

    def check(self, device: str, dtype: str, batch: int, threads: int) -> None:
        from mdp_cli.latency.timing import clock_for

        f = self.frame
        if not len(f):
            return
        clock = clock_for("cuda" if "cuda" in str(f["clock"].iloc[0]) else "cpu", threads)
        for column, want in (("device", device), ("dtype", dtype), ("batch", batch), ("threads", threads),
                             ("clock", clock)):
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
        new = pd.DataFrame(rows, columns=COLUMNS)
        self.frame = new if not len(self.frame) else pd.concat([self.frame, new], ignore_index=True)
        self.frame = self.frame.drop_duplicates(["signature", "sizes"], keep="last").reset_index(drop=True)
        self._reindex()

    def save(self, **provenance_fields: Any) -> None:
        for value in self.frame["median_ms"]:
            if not np.isfinite(float(value)):
                raise MdpError(f"{self.path}: refusing to write a non-finite latency")
        with atomic_path(self.path) as tmp:
            self.frame.to_csv(tmp, index=False)
        write_json(self.sidecar, {
            "schema": SCHEMA, "version": VERSION,
            "provenance": provenance(device=self.device, dtype=self.dtype, batch=self.batch, threads=self.threads,
                                     rows=len(self.frame), **provenance_fields),
            "csv": self.path.name,
        })

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


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
    """The term's latency table over its dims' options, from measured rows (interpolated in between)."""
    shape = tuple(len(o) for o in options)
    table = np.full(shape, np.nan)
    for idx in np.ndindex(*shape) if shape else [()]:
        value = lut.get(signature, sizes_key(roles, [options[d][i] for d, i in enumerate(idx)]))
        if value is not None:
            table[idx] = value
    if np.isnan(table).any() and interpolate and shape:
        table = fill_by_interpolation(table, options)
    if np.isnan(table).any():
        missing = int(np.isnan(table).sum())
        raise MdpError(f"{lut.path}: {missing} configurations of op {signature[:80]}... are not measured; "
                       "run 'mdp profile' for this model (and the same --step/--grid)")
    return table


def lut_summary(path: str | Path) -> Mapping[str, Any]:
    frame = pd.read_csv(path, keep_default_na=False)
    return {"rows": len(frame), "signatures": frame["signature"].nunique()}
