"""The solution artifact (schema ``mdp.solution`` version 1) and its validation against a problem."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from mdp_cli.artifacts import is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import SchemaError
from mdp_cli.solve.problem import Problem

SCHEMA = "mdp.solution"
VERSION = 1


@dataclasses.dataclass
class Solution:
    """What the solver chose, what it predicts, and how sure it is."""

    problem_name: str
    problem_hash: str
    option_index: dict[str, int]
    choice: dict[str, int]  # dim -> kept size
    kept: dict[str, bool]  # block -> kept
    budget: float
    dense_latency: float
    predicted_latency: float
    objective: float
    dense_objective: float
    status: str  # optimal | time_limit | nothing_to_prune
    gap: float | None  # relative gap between incumbent and bound; 0 when proven optimal
    bound: float | None
    latency_model: str = "multidim"  # multidim | linear
    linear_latency: float | None = None  # the linear model's estimate (linear mode only)
    blocks_enabled: bool = True
    units: str = "ms"
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    solver: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def latency_ratio(self) -> float:
        return self.predicted_latency / self.dense_latency if self.dense_latency else math.nan

    @property
    def within_budget(self) -> bool:
        return self.predicted_latency <= self.budget * (1 + 1e-9) + 1e-12

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body.pop("provenance")
        return {"schema": SCHEMA, "version": VERSION, "provenance": self.provenance, **_renamed(body)}

    def save(self, path: str | Path, **provenance_fields: Any) -> None:
        if not self.provenance:
            self.provenance = provenance(**provenance_fields)
        write_json(path, self.to_dict())

    def summary(self) -> str:
        removed = sorted(b for b, k in self.kept.items() if not k)
        lines = [
            f"status      {self.status}" + (f" (gap {self.gap:.3%})" if self.gap else
                                                (" (gap unknown: no bound yet)" if self.status == "time_limit" else "")),
            f"latency     {self.predicted_latency:.4g} {self.units} predicted = {self.latency_ratio:.1%} of dense "
            f"{self.dense_latency:.4g} {self.units} (budget {self.budget:.4g} {self.units})",
        ]
        if self.linear_latency is not None:
            lines.append(f"linear est. {self.linear_latency:.4g} {self.units} (the linear model's view; the line above uses the tables)")
        lines.append(
            f"importance  {self.objective:.6g} kept of {self.dense_objective:.6g} "
            f"({self.objective / self.dense_objective:.1%})" if self.dense_objective else f"importance  {self.objective:.6g}"
        )
        lines.append(f"blocks      {len(removed)} removed" + (f": {', '.join(removed)}" if removed else ""))
        how = self.solver.get("formulation", "")
        lines.append(f"time        build {self.timings.get('build_s', 0):.2f} s, solve {self.timings.get('solve_s', 0):.2f} s"
                     + (f" ({how} formulation)" if how else ""))
        return "\n".join(lines)


def _renamed(body: dict[str, Any]) -> dict[str, Any]:
    # The file says "blocks" for kept flags: it reads better next to "choice".
    body["blocks"] = body.pop("kept")
    return body


def load_solution(path: str | Path, problem: Problem | None = None) -> Solution:
    """Read a solution; with ``problem``, check that it was solved for that very problem."""
    data = read_json(path, SCHEMA, VERSION)
    try:
        data = dict(data)
        data.pop("schema"), data.pop("version")
        data["kept"] = data.pop("blocks")
        solution = Solution(**data)
    except (KeyError, TypeError) as exc:
        raise SchemaError(f"{path}: malformed solution ({exc}); re-run 'mdp solve'") from None
    for field in ("predicted_latency", "dense_latency", "budget", "objective"):
        if not is_finite_number(getattr(solution, field)):
            raise SchemaError(f"{path}: field '{field}' must be a finite number")
    if not isinstance(solution.choice, dict) or not isinstance(solution.kept, dict):
        raise SchemaError(f"{path}: 'choice' and 'blocks' must be objects (name -> size, name -> kept); "
                          "re-run 'mdp solve'")
    if problem is not None:
        check_fits(solution, problem, str(path))
    return solution


def check_fits(solution: Solution, problem: Problem, source: str) -> None:
    if solution.problem_hash != problem.content_hash():
        raise SchemaError(
            f"{source}: solved for another problem (problem_hash differs); re-run 'mdp solve' on this problem"
        )
    for dim in problem.dims:
        size = solution.choice.get(dim.name)
        if size not in dim.options:
            raise SchemaError(f"{source}: choice[{dim.name!r}] = {size!r} is not one of its options {list(dim.options)}")
    extra = set(solution.choice) - {d.name for d in problem.dims}
    if extra:
        raise SchemaError(f"{source}: choice names dims the problem does not have: {sorted(extra)[:3]}")
