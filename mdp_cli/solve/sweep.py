"""Budget sweeps: the optimum at every budget of a range, as one artifact (schema ``mdp.sweep`` version 1).

``parse_sweep("0.3:0.9:0.1")`` gives the budgets (start:stop:step, stop included; or a comma list),
``solve_sweep`` solves them all with one prepared model, each budget warm-started from the optimum of the
budget below it (``solver.solve_budgets``, the same path as ``mdp pareto``), and ``load_sweep`` reads the
artifact back with validation. Torch-free, like the rest of ``solve/``."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

from mdp_cli.artifacts import is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import MdpError, SchemaError
from mdp_cli.solve.problem import Problem
from mdp_cli.solve.solver import solve_budgets

SCHEMA = "mdp.sweep"
VERSION = 1
# A sweep is for plotting a front, not for enumerating every budget; 0.3:0.9:1e-9 is a typo.
MAX_BUDGETS = 200
_FORMS = "start:stop:step (0.3:0.9:0.1) or a comma list of fractions of the dense latency (0.3,0.5,0.7)"


def parse_sweep(spec: Any, name: str = "--sweep") -> list[float]:
    """The budgets of a sweep spec, as fractions of the dense latency in (0, 1], ascending, distinct.

    ``start:stop:step`` includes ``stop`` when it lies on the grid (decimal arithmetic: 0.3:0.9:0.1 ends at
    0.9, not 0.8999999); a comma list is taken as given (sorted). ``name`` is what error messages call the
    spec (``--sweep``, or a config key)."""
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(v) for v in spec)
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = str(spec)  # a single budget, as YAML reads `sweep: 0.5`
    if not isinstance(spec, str) or not spec.strip():
        raise MdpError(f"{name} {spec!r}: expected {_FORMS}")
    text = spec.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise MdpError(f"{name} {spec!r}: expected three numbers start:stop:step, e.g. 0.3:0.9:0.1")
        start, stop, step = (_decimal(p, spec, name) for p in parts)
        if step <= 0:
            raise MdpError(f"{name} {spec!r}: step {step} must be positive")
        if stop < start:
            raise MdpError(f"{name} {spec!r}: stop {stop} is below start {start}; write {stop}:{start}:{step}")
        count = int((stop - start) / step) + 1
        if count > MAX_BUDGETS:
            raise MdpError(f"{name} {spec!r}: {count} budgets; at most {MAX_BUDGETS} (use a larger step)")
        values = [start + i * step for i in range(count)]
    else:
        values = [_decimal(p, spec, name) for p in text.split(",") if p.strip()]
        if not values:
            raise MdpError(f"{name} {spec!r}: expected {_FORMS}")
        if len(values) > MAX_BUDGETS:
            raise MdpError(f"{name} {spec!r}: {len(values)} budgets; at most {MAX_BUDGETS}")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise MdpError(f"{name} {spec!r}: budget {repeated[0]} is listed twice; list each budget once")
    for value in values:
        if not 0 < value <= 1:
            raise MdpError(f"{name} {spec!r}: budget {value} is not a fraction of the dense latency in (0, 1]")
    return [float(v) for v in sorted(values)]


def _decimal(text: str, spec: str, name: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise MdpError(f"{name} {spec!r}: {text.strip()!r} is not a number; expected {_FORMS}") from None
    if not value.is_finite():
        raise MdpError(f"{name} {spec!r}: {text.strip()!r} is not a finite number")
    return value


def solve_sweep(problem: Problem, budgets: list[float], spec: str = "", **options: Any) -> dict[str, Any]:
    """Solve ``problem`` at every budget (fractions of dense) and return the ``mdp.sweep`` record (without
    provenance; ``save_sweep`` adds it). ``options`` are those of ``solve_problem``. An unreachable budget
    is a point with status ``infeasible`` and the solver's message."""
    options = dict(options)
    latency_model, blocks = options.get("latency_model", "multidim"), options.get("blocks", True)
    results = solve_budgets(problem, budgets, **options)
    dense_objective = problem.objective(problem.dense_choice())
    points = []
    for fraction, result in zip(budgets, results):
        if isinstance(result, Exception):
            points.append({"budget": fraction, "budget_latency": fraction * problem.dense_latency,
                           "status": "infeasible", "message": str(result)})
            continue
        points.append({
            "budget": fraction, "budget_latency": result.budget, "status": result.status,
            "objective": result.objective,
            "importance_fraction": result.objective / dense_objective if dense_objective else None,
            "predicted_latency": result.predicted_latency, "latency_fraction": result.latency_ratio,
            "gap": result.gap, "solve_s": result.timings.get("solve_s", 0.0),
            "choice": dict(result.choice), "blocks": dict(result.kept),
        })
    return {
        "problem_name": problem.name, "problem_hash": problem.content_hash(), "spec": spec,
        "units": problem.units, "dense_latency": problem.dense_latency, "dense_objective": dense_objective,
        "latency_model": latency_model, "blocks_enabled": bool(blocks),
        # what else shaped the optima (time limit, gap, constraints), so that the sweep can be re-run exactly
        "options": {k: v for k, v in options.items() if k not in ("latency_model", "blocks", "verbose")},
        "dims": [{"name": d.name, "size": d.size, "options": list(d.options)} for d in problem.dims],
        "removable_blocks": [b.name for b in problem.blocks if b.removable],
        "points": points,
    }


def save_sweep(path: str | Path, record: Mapping[str, Any], **provenance_fields: Any) -> None:
    write_json(path, {"schema": SCHEMA, "version": VERSION, "provenance": provenance(**provenance_fields),
                      **record})


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep artifact; every malformed field is a one-line SchemaError naming the file."""
    data = read_json(path, SCHEMA, VERSION)

    def fail(message: str) -> SchemaError:
        return SchemaError(f"{path}: {message}; re-run 'mdp solve --sweep'")

    for field in ("dense_latency", "dense_objective"):
        if not is_finite_number(data.get(field)):
            raise fail(f"field '{field}' must be a finite number")
    dims = data.get("dims")
    if not isinstance(dims, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                             and isinstance(d.get("size"), int) for d in dims):
        raise fail("'dims' must be a list of {name, size, options}")
    sizes = {d["name"]: d["size"] for d in dims}
    points = data.get("points")
    if not isinstance(points, list) or not points:
        raise fail("'points' must be a non-empty list")
    for i, point in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(point, dict) or not isinstance(point.get("status"), str):
            raise fail(f"{where} must be an object with a 'status'")
        if not is_finite_number(point.get("budget")) or not 0 < point["budget"] <= 1:
            raise fail(f"{where}.budget must be a fraction in (0, 1]")
        if point["status"] == "infeasible":
            continue
        for field in ("objective", "predicted_latency", "latency_fraction"):
            if not is_finite_number(point.get(field)):
                raise fail(f"{where}.{field} must be a finite number")
        choice, kept = point.get("choice"), point.get("blocks")
        if not isinstance(choice, dict) or not isinstance(kept, dict):
            raise fail(f"{where} needs 'choice' (dim -> size) and 'blocks' (block -> kept)")
        for dim, size in choice.items():
            if dim not in sizes:
                raise fail(f"{where}.choice names an unknown dim {dim!r}")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= sizes[dim]:
                raise fail(f"{where}.choice[{dim!r}] = {size!r} is not a width between 1 and {sizes[dim]}")
        if not all(isinstance(v, bool) for v in kept.values()):
            raise fail(f"{where}.blocks values must be true or false")
    return data
