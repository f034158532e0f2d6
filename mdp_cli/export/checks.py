"""Checks before an export: the solution, the problem, the space and the importance belong together.

``mdp export`` cuts a model by a solution's widths and blocks, keeping the channels/units that the
importance file ranks first. Any of the four files can come from another run, another model or a hand
edit; each mismatch is a one-line ``MdpError`` naming the file, what is wrong and the fix:

- the solution was solved for another problem (``problem_hash`` differs from the problem's content hash),
  or its widths/blocks were edited after solving (the problem's latency of its choice differs from the
  latency it recorded);
- a width that is not one of its dim's options, a dim of the space missing from the solution, a dim the
  space does not have;
- a block that is not a removable block of the space, a missing block, a kept flag that is not a boolean;
- importance scored for another model or space: a dim missing, an extra dim, a unit count or a ranking
  (``order``) that does not match the dim.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from mdp_cli.errors import SchemaError

_REL_TOL = 1e-6


def check_solution(solution: Mapping[str, Any], problem: Mapping[str, Any] | None, space_dict: Any,
                   importance: Mapping[str, Any] | None, where: str = "solution",
                   problem_where: str = "problem", importance_where: str = "importance") -> None:
    """Refuse (``SchemaError``, one line) a solution, problem or importance that does not fit the space.

    ``solution``, ``problem`` and ``importance`` are the JSON objects as read from disk (``problem`` and
    ``importance`` may be None when not given); ``space_dict`` is ``PruningSpace.to_dict()`` (or the
    space itself); ``where`` and the ``*_where`` names are the files, for the messages."""
    space = space_dict.to_dict() if hasattr(space_dict, "to_dict") else space_dict
    dims = {d["name"]: d for d in space["dims"]}
    removable = [b["name"] for b in space["blocks"] if b.get("removable")]
    fixed = [b["name"] for b in space["blocks"] if not b.get("removable")]
    choice, kept = _choice_and_blocks(solution, dims, removable, where, fixed)
    if problem is not None:
        _check_problem(solution, problem, dims, choice, kept, where, problem_where)
    if importance is not None:
        check_importance(importance, space, importance_where)


def _choice_and_blocks(solution: Mapping[str, Any], dims: Mapping[str, Mapping[str, Any]],
                       removable: list[str], where: str, fixed: list[str] = ()) -> tuple[dict[str, int], dict[str, bool]]:
    choice = solution.get("choice")
    if not isinstance(choice, Mapping):
        raise SchemaError(f"{where}: field 'choice' (dim -> kept width) is missing; re-run 'mdp solve'")
    unknown = sorted(set(choice) - set(dims))
    if unknown:
        raise SchemaError(f"{where}: choice names dims this model's space does not have ({_few(unknown)}); "
                          "the solution is for another model or space options: re-run 'mdp solve'")
    missing = [name for name in dims if name not in choice]
    if missing:
        raise SchemaError(f"{where}: choice lacks dims of this model's space ({_few(missing)}); the solution "
                          "was edited or made for other space options: re-run 'mdp solve'")
    for name, width in choice.items():
        options = list(dims[name]["options"])
        if not isinstance(width, int) or isinstance(width, bool) or width not in options:
            raise SchemaError(f"{where}: choice[{name!r}] = {width!r} is not one of the dim's widths {_few(options)}; "
                              "re-run 'mdp solve' instead of editing the solution")
    blocks = solution.get("blocks", {})
    if not isinstance(blocks, Mapping):
        raise SchemaError(f"{where}: field 'blocks' must map block names to true (kept) or false (removed)")
    # a problem may list the fixed parts as blocks too (always kept): allowed only as kept
    removed_fixed = sorted(name for name in fixed if blocks.get(name) is False)
    if removed_fixed:
        raise SchemaError(f"{where}: blocks removes parts of the model that cannot be removed ({_few(removed_fixed)}); "
                          "re-run 'mdp solve'")
    unknown = sorted(set(blocks) - set(removable) - set(fixed))
    if unknown:
        raise SchemaError(f"{where}: blocks names blocks that are not removable blocks of this model "
                          f"({_few(unknown)}); re-run 'mdp solve'")
    for name, flag in blocks.items():
        if not isinstance(flag, bool):
            raise SchemaError(f"{where}: blocks[{name!r}] = {flag!r} must be true or false")
    if solution.get("blocks_enabled", True) and blocks:
        missing = [name for name in removable if name not in blocks]
        if missing:
            raise SchemaError(f"{where}: blocks lacks removable blocks of this model ({_few(missing)}); "
                              "re-run 'mdp solve'")
    return dict(choice), dict(blocks)


def _check_problem(solution: Mapping[str, Any], problem: Mapping[str, Any], dims: Mapping[str, Mapping[str, Any]],
                   choice: dict[str, int], kept: dict[str, bool], where: str, problem_where: str) -> None:
    from mdp_cli.solve.problem import problem_from_dict

    loaded = problem_from_dict(problem, source=problem_where)
    if solution.get("problem_hash") != loaded.content_hash():
        raise SchemaError(f"{where}: solved for another problem (its problem_hash does not match {problem_where}); "
                          f"re-run 'mdp solve' on {problem_where}")
    for dim in loaded.dims:
        if dim.name not in dims or list(dims[dim.name]["options"]) != list(dim.options):
            raise SchemaError(f"{problem_where}: dim {dim.name} does not match this model's space (another model "
                              "or other space options); re-run 'mdp problem' and 'mdp solve'")
    index = {d.name: d.options.index(choice[d.name]) for d in loaded.dims}
    latency = loaded.latency(index, kept)
    recorded = solution.get("predicted_latency")
    if not isinstance(recorded, (int, float)) or not math.isclose(latency, recorded, rel_tol=_REL_TOL, abs_tol=1e-12):
        raise SchemaError(f"{where}: its widths and blocks give {latency:.6g} {loaded.units} on {problem_where} but "
                          f"it records {recorded!r}: the choice or blocks were edited after solving; re-run 'mdp solve'")


def check_importance(importance: Mapping[str, Any], space_dict: Any, where: str = "importance") -> None:
    """Refuse importance scored for another model or space: every dim of the space, with one score per
    unit (channel, head, neuron) and a ranking ``order`` of those units, and no other dim."""
    space = space_dict.to_dict() if hasattr(space_dict, "to_dict") else space_dict
    records = importance.get("dims")
    if not isinstance(records, Mapping):
        raise SchemaError(f"{where}: field 'dims' must be an object of dim name -> scores; re-run 'mdp score'")
    dims = {d["name"]: d for d in space["dims"]}
    model = space.get("model", "this model")
    missing = [name for name in dims if name not in records]
    if missing:
        raise SchemaError(f"{where}: no scores for dims {_few(missing)} of {model}; it was scored for another model "
                          f"or space: re-run 'mdp score' for {model}")
    extra = sorted(set(records) - set(dims))
    if extra:
        raise SchemaError(f"{where}: scores dims {_few(extra)} that {model}'s space does not have; it was scored "
                          f"for another model or space: re-run 'mdp score' for {model}")
    for name, dim in dims.items():
        record = records[name]
        units = int(dim["size"])
        scores = record.get("scores") if isinstance(record, Mapping) else None
        if not isinstance(scores, list) or len(scores) != units:
            found = len(scores) if isinstance(scores, list) else "no"
            raise SchemaError(f"{where}: dim {name} has {found} scores but {model} has {units} units there; it was "
                              f"scored for another model: re-run 'mdp score' for {model}")
        order = record.get("order")
        if not isinstance(order, list) or sorted(o for o in order if isinstance(o, int)) != list(range(units)):
            raise SchemaError(f"{where}: dims.{name}.order must rank each of the {units} units once; re-run 'mdp score'")


def _few(items: list[Any], shown: int = 4) -> str:
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f", ... {len(items) - shown} more" if len(items) > shown else "")
