"""The pruning problem: a self-contained, torch-free description of what the solver optimises.

Schema ``mdp.problem`` version 1 (documented in docs/schemas.md):

- ``dims``: prunable dimensions. Each has ``name``, ``options`` (allowed sizes, strictly increasing, the
  last one the full size), ``importance`` (one value per option: the cumulative sum of the top-k chunk
  scores, so non-decreasing) and optionally ``block`` (the block whose removal also removes this
  importance), ``size`` and ``step`` (informational).
- ``gated_importance`` (optional): extra importance entries ``{dim, block, values}`` for a dim shared by
  several blocks whose parts inside a removable block vanish with it.
- ``terms``: latency terms. Each depends on 0-3 dims; ``table`` is a nested list indexed by those dims'
  option indices (shape = number of options of each dim), non-negative latencies in ``units``;
  ``block`` (optional) gates it.
- ``blocks``: ``{name, removable}``. A removed block contributes neither latency nor importance.
- ``constant_latency``: what nothing prunes; ``dense_latency`` (optional): if given it must equal the
  latency of the all-full, all-kept configuration, as a check that the file is internally consistent.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mdp_cli.artifacts import canonical_hash, is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import SchemaError

SCHEMA = "mdp.problem"
VERSION = 1
# Cumulative importance is a sum of non-negative scores; allow float noise from summation order only.
_MONOTONE_SLACK = 1e-9


@dataclasses.dataclass(frozen=True)
class Dim:
    name: str
    options: tuple[int, ...]
    step: int | None = None

    @property
    def size(self) -> int:
        return self.options[-1]

    @property
    def full_index(self) -> int:
        return len(self.options) - 1


@dataclasses.dataclass(frozen=True)
class ImportanceEntry:
    """Importance over one dim's options, counted only while ``block`` (if any) is kept."""

    dim: str
    values: np.ndarray
    block: str | None = None


@dataclasses.dataclass(frozen=True)
class Term:
    """A latency term: ``table[i_1, ..., i_n]`` is its latency when dim ``dims[j]`` takes option i_j."""

    name: str
    dims: tuple[str, ...]
    table: np.ndarray
    block: str | None = None
    # Optional per-option counts over the same dims, for constraints beside latency: "params" (weights
    # kept) and "flops" (per image). Absent in older problems; a missing count is zero for this term.
    resources: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


# Counts a term may carry beside its latency table (each the table's shape, non-negative).
RESOURCES = ("params", "flops")


@dataclasses.dataclass(frozen=True)
class Block:
    name: str
    removable: bool = True


@dataclasses.dataclass
class Problem:
    dims: list[Dim]
    importance: list[ImportanceEntry]
    terms: list[Term]
    blocks: list[Block]
    constant_latency: float = 0.0
    units: str = "ms"
    name: str = ""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- lookups -------------------------------------------------------------------------------------
    def dim(self, name: str) -> Dim:
        return self._dims_by_name()[name]

    def _dims_by_name(self) -> dict[str, Dim]:
        return {dim.name: dim for dim in self.dims}

    def block_names(self) -> list[str]:
        return [block.name for block in self.blocks]

    # -- evaluation ----------------------------------------------------------------------------------
    def dense_choice(self) -> dict[str, int]:
        return {dim.name: dim.full_index for dim in self.dims}

    def latency(self, choice: Mapping[str, int], kept: Mapping[str, bool] | None = None) -> float:
        """Predicted latency of a configuration (option index per dim, kept flag per block)."""
        kept = kept or {}
        # fsum: the correctly rounded sum, whatever the order, so "within the budget" is a property of the
        # configuration and not of the order in which a solver happened to add its terms.
        return math.fsum([self.constant_latency] + [
            float(term.table[tuple(choice[d] for d in term.dims)]) for term in self.terms
            if term.block is None or kept.get(term.block, True)])

    def objective(self, choice: Mapping[str, int], kept: Mapping[str, bool] | None = None) -> float:
        """Total importance kept by a configuration."""
        kept = kept or {}
        return math.fsum(float(entry.values[choice[entry.dim]]) for entry in self.importance
                         if entry.block is None or kept.get(entry.block, True))

    def resource(self, name: str, choice: Mapping[str, int], kept: Mapping[str, bool] | None = None) -> float:
        """Total ``name`` count ("params", "flops") of a configuration; terms without it count zero."""
        kept = kept or {}
        return math.fsum(float(term.resources[name][tuple(choice[d] for d in term.dims)]) for term in self.terms
                         if name in term.resources and (term.block is None or kept.get(term.block, True)))

    def has_resource(self, name: str) -> bool:
        return any(name in term.resources for term in self.terms)

    @property
    def dense_latency(self) -> float:
        return self.latency(self.dense_choice())

    def content_hash(self) -> str:
        """Hash of everything that defines the optimisation (not provenance): a solution names it."""
        return canonical_hash(_problem_body(self))

    # -- io ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        body = _problem_body(self)
        body["dense_latency"] = self.dense_latency
        return {"schema": SCHEMA, "version": VERSION, "provenance": self.provenance, **body}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


def _problem_body(problem: Problem) -> dict[str, Any]:
    ungated: dict[str, ImportanceEntry] = {}
    owner: dict[str, str | None] = {}
    gated: list[dict[str, Any]] = []
    for entry in problem.importance:
        # The first entry of a dim is written inline with it (with its block); the rest as gated entries.
        if entry.dim not in ungated:
            ungated[entry.dim] = entry
            owner[entry.dim] = entry.block
        else:
            gated.append({"dim": entry.dim, "block": entry.block, "values": entry.values.tolist()})
    dims = []
    for dim in problem.dims:
        record: dict[str, Any] = {"name": dim.name, "size": dim.size, "options": list(dim.options)}
        if dim.step is not None:
            record["step"] = dim.step
        entry = ungated.get(dim.name)
        record["importance"] = entry.values.tolist() if entry else [0.0] * len(dim.options)
        if owner.get(dim.name) is not None:
            record["block"] = owner[dim.name]
        dims.append(record)
    body: dict[str, Any] = {
        "name": problem.name,
        "units": problem.units,
        "constant_latency": problem.constant_latency,
        "dims": dims,
        "blocks": [{"name": b.name, "removable": b.removable} for b in problem.blocks],
        "terms": [
            {"name": t.name, "dims": list(t.dims), "block": t.block, "table": t.table.tolist(),
             **{k: np.asarray(v).tolist() for k, v in sorted(t.resources.items())}}
            for t in problem.terms
        ],
    }
    if gated:
        body["gated_importance"] = gated
    return body


# ---------------------------------------------------------------------------------------------------
# Reading and validation: every message names the file and the field.
# ---------------------------------------------------------------------------------------------------


def load_problem(path: str | Path) -> Problem:
    data = read_json(path, SCHEMA, VERSION)
    return problem_from_dict(data, source=str(path))


def problem_from_dict(data: Mapping[str, Any], source: str = "<problem>") -> Problem:
    def fail(field: str, message: str) -> SchemaError:
        return SchemaError(f"{source}: {field}: {message}")

    units = data.get("units", "ms")
    if not isinstance(units, str):
        raise fail("units", "must be a string such as 'ms'")
    constant = data.get("constant_latency", 0.0)
    if not is_finite_number(constant) or constant < 0:
        raise fail("constant_latency", f"must be a finite non-negative number, got {constant!r}")

    blocks = _read_blocks(data.get("blocks", []), fail)
    block_names = {b.name for b in blocks}

    def check_block(field: str, name: Any) -> str | None:
        if name is None:
            return None
        if not isinstance(name, str) or name not in block_names:
            raise fail(field, f"names block {name!r}, which is not in 'blocks'")
        return name

    dims, importance = _read_dims(data.get("dims"), fail, check_block)
    dims_by_name = {d.name: d for d in dims}
    importance += _read_gated_importance(data.get("gated_importance", []), dims_by_name, fail, check_block)
    terms = _read_terms(data.get("terms", []), dims_by_name, fail, check_block)

    problem = Problem(
        dims=dims,
        importance=importance,
        terms=terms,
        blocks=blocks,
        constant_latency=float(constant),
        units=units,
        name=str(data.get("name", "")),
        provenance=dict(data.get("provenance") or {}),
    )
    declared = data.get("dense_latency")
    if declared is not None:
        if not is_finite_number(declared):
            raise fail("dense_latency", f"must be a finite number, got {declared!r}")
        actual = problem.dense_latency
        if not math.isclose(declared, actual, rel_tol=1e-6, abs_tol=1e-9):
            raise fail(
                "dense_latency",
                f"is {declared:g} but constant_latency plus the full-size table entries give {actual:g}",
            )
    return problem


def _read_blocks(raw: Any, fail) -> list[Block]:
    if not isinstance(raw, list):
        raise fail("blocks", "must be a list")
    blocks, seen = [], set()
    for i, item in enumerate(raw):
        field = f"blocks[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise fail(field, "must be an object with a string 'name'")
        if item["name"] in seen:
            raise fail(field, f"duplicate block name {item['name']!r}")
        seen.add(item["name"])
        removable = item.get("removable", True)
        if not isinstance(removable, bool):
            raise fail(f"{field}.removable", "must be true or false")
        blocks.append(Block(item["name"], removable))
    return blocks


def _read_dims(raw: Any, fail, check_block) -> tuple[list[Dim], list[ImportanceEntry]]:
    if not isinstance(raw, list) or not raw:
        raise fail("dims", "must be a non-empty list")
    dims, importance, seen = [], [], set()
    for i, item in enumerate(raw):
        field = f"dims[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise fail(field, "must be an object with a string 'name'")
        name = item["name"]
        field = f"dims[{i}] ({name})"
        if name in seen:
            raise fail(field, "duplicate dim name")
        seen.add(name)
        options = item.get("options")
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(o, int) and not isinstance(o, bool) and o > 0 for o in options)
        ):
            raise fail(f"{field}.options", "must be a non-empty list of positive integers (sizes)")
        if any(b <= a for a, b in zip(options, options[1:])):
            raise fail(f"{field}.options", "must be strictly increasing")
        size = item.get("size", options[-1])
        if size != options[-1]:
            raise fail(f"{field}.options", f"the last option must be the full size {size}, got {options[-1]}")
        step = item.get("step")
        if step is not None and (not isinstance(step, int) or step <= 0):
            raise fail(f"{field}.step", "must be a positive integer")
        dim = Dim(name, tuple(options), step)
        dims.append(dim)
        values = item.get("importance", [0.0] * len(options))
        block = check_block(f"{field}.block", item.get("block"))
        importance.append(ImportanceEntry(name, _importance_vector(values, dim, f"{field}.importance", fail), block))
    return dims, importance


def _importance_vector(values: Any, dim: Dim, field: str, fail) -> np.ndarray:
    if not isinstance(values, list) or len(values) != len(dim.options):
        raise fail(field, f"must be a list of {len(dim.options)} numbers (one per option)")
    for k, v in enumerate(values):
        if not is_finite_number(v):
            raise fail(field, f"entry {k} is {v!r}; importance must be finite (re-run 'mdp score')")
    array = np.asarray(values, dtype=float)
    drops = np.diff(array) < -_MONOTONE_SLACK * max(1.0, float(np.abs(array).max()))
    if drops.any():
        k = int(np.argmax(drops))
        raise fail(field, f"decreases from option {k} to {k + 1}; it must be cumulative (non-decreasing)")
    return array


def _read_gated_importance(raw: Any, dims_by_name, fail, check_block) -> list[ImportanceEntry]:
    if not isinstance(raw, list):
        raise fail("gated_importance", "must be a list")
    entries = []
    for i, item in enumerate(raw):
        field = f"gated_importance[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("dim"), str) or item["dim"] not in dims_by_name:
            raise fail(f"{field}.dim", f"must name a dim in 'dims', got {item.get('dim') if isinstance(item, dict) else item!r}")
        block = check_block(f"{field}.block", item.get("block"))
        if block is None:
            raise fail(f"{field}.block", "is required (ungated importance belongs in the dim itself)")
        dim = dims_by_name[item["dim"]]
        entries.append(ImportanceEntry(dim.name, _importance_vector(item.get("values"), dim, f"{field}.values", fail), block))
    return entries


def _read_terms(raw: Any, dims_by_name, fail, check_block) -> list[Term]:
    if not isinstance(raw, list):
        raise fail("terms", "must be a list")
    terms, seen = [], set()
    for i, item in enumerate(raw):
        field = f"terms[{i}]"
        if not isinstance(item, dict):
            raise fail(field, "must be an object")
        name = item.get("name", f"term{i}")
        if not isinstance(name, str):
            raise fail(field, "'name' must be a string")
        if name in seen:
            raise fail(field, f"duplicate term name {name!r}")
        seen.add(name)
        field = f"terms[{i}] ({name})"
        dims = item.get("dims", [])
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims) or len(dims) > 3 \
                or len(set(dims)) != len(dims):
            raise fail(f"{field}.dims", "must be a list of at most 3 distinct dim names")
        for d in dims:
            if d not in dims_by_name:
                raise fail(f"{field}.dims", f"names dim {d!r}, which is not in 'dims'")
        expected = tuple(len(dims_by_name[d].options) for d in dims)
        table = _latency_table(item.get("table"), expected, f"{field}.table", fail)
        if table.shape != expected:
            raise fail(
                f"{field}.table",
                f"has shape {list(table.shape)} but its dims {dims} have {list(expected)} options",
            )
        if not np.isfinite(table).all():
            raise fail(f"{field}.table", "holds NaN or infinite latencies (re-profile this term)")
        if (table < 0).any():
            raise fail(f"{field}.table", f"holds a negative latency ({table.min():g})")
        block = check_block(f"{field}.block", item.get("block"))
        resources = {}
        for key in RESOURCES:
            if item.get(key) is None:
                continue
            counts = _latency_table(item[key], expected, f"{field}.{key}", fail)
            if counts.shape != expected or not np.isfinite(counts).all() or (counts < 0).any():
                raise fail(f"{field}.{key}", f"must be finite non-negative counts with the table's shape {list(expected)}")
            resources[key] = counts
        terms.append(Term(name, tuple(dims), table, block, resources))
    return terms


def _latency_table(raw: Any, shape: tuple[int, ...], field: str, fail) -> np.ndarray:
    """A nested list of numbers as a float array. Strings and booleans are refused, not converted: numpy
    would read "1.5" as 1.5 (and True as 1.0), and a hand-edited file would be solved as if it were right.
    None stays a missing latency (NaN), which the caller reports."""
    try:
        leaves = np.asarray(raw, dtype=object)
    except (TypeError, ValueError):
        leaves = None
    flat = [] if leaves is None else leaves.ravel().tolist()
    kinds = set(map(type, flat))
    if leaves is None or list in kinds or dict in kinds:  # ragged, or nested deeper than its dims
        raise fail(field, f"must be a nested list of numbers with shape {list(shape)}")
    if not kinds <= {int, float, type(None)}:
        bad = next(v for v in flat if type(v) not in (int, float, type(None)))
        raise fail(field, f"holds {bad!r}, which is not a number; latencies are numbers in the problem's units")
    if type(None) in kinds:
        flat = [math.nan if v is None else v for v in flat]
    return np.asarray(flat, dtype=float).reshape(leaves.shape)


def make_problem(
    dims: Sequence[Dim],
    importance: Sequence[ImportanceEntry],
    terms: Sequence[Term],
    blocks: Sequence[Block] = (),
    constant_latency: float = 0.0,
    name: str = "",
    **provenance_fields: Any,
) -> Problem:
    """Build a problem in code and validate it exactly as a file would be (round trip through the dict)."""
    problem = Problem(list(dims), list(importance), list(terms), list(blocks), float(constant_latency), name=name)
    checked = problem_from_dict(problem.to_dict(), source=name or "<problem>")
    checked.provenance = provenance(**provenance_fields)
    return checked
