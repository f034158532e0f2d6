"""``mdp run --refine``: close the loop between the latency table and the model it predicts (docs/refine.md).

Round 1 is the plain run's solution, exported and measured in turns with the dense model. While the measured
fraction of dense misses the budget by more than ``refine.tolerance`` (too slow; with ``two_sided`` also too
fast: accuracy left on the table), a round

a. re-measures, with more samples and the family's timing plan (turns, reference op), the LUT rows the last
   configuration and the dense one read (``Family.rows_used``) and replaces them in the shared LUT
   (``Lut.replace_rows``: under its lock, atomically);
b. rebuilds the problem from the corrected table and solves it at the budget corrected by the last
   configuration's measured/predicted ratio when the corrected table still disagrees with the measurement
   by more than the tolerance (``corrected_budget``); the rows of each new solution are re-measured too and
   the problem solved again until the solution reads only re-measured rows;
c. exports and measures it.

It stops when a round meets the budget, after ``refine.rounds`` rounds, when a round chooses a configuration
an earlier round already had (nothing would change), or when the corrected budget is below the smallest
configuration of the space; ``refine.json`` says which, in one line. The chosen export (the most important
one that meets the budget; else the fastest) is copied to ``RUN_DIR/exported``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from mdp_cli.artifacts import atomic_path, is_finite_number, provenance, read_json, write_json
from mdp_cli.errors import InfeasibleBudgetError, MdpError, SchemaError

SCHEMA = "mdp.refine"
VERSION = 1
# Re-solves within one round while the new solution reads rows not yet re-measured (each pass measures more).
MAX_PASSES = 5
ROUND_FIELDS = {"round": int, "budget_solved": float, "predicted_fraction": float, "measured_fraction": float,
                "rows_reprofiled": int, "solution": str, "met": bool}


def corrected_budget(target: float, predicted: float, measured: float, tolerance: float) -> float:
    """The fraction of the dense prediction to give the solver next.

    ``predicted`` and ``measured`` are the last configuration's fractions of dense: by the (re-measured)
    table and timed in turns. Where they agree within ``tolerance`` the table is trusted and ``target`` is
    solved as is. Where they do not, the model runs ``measured / predicted`` times what the table says, and
    a configuration measured at ``target`` is predicted at ``target * predicted / measured``: that is solved
    (at most 1, the dense model)."""
    if not (predicted > 0 and measured > 0):
        return min(target, 1.0)
    if abs(predicted / measured - 1.0) <= tolerance:
        return min(target, 1.0)
    return min(target * predicted / measured, 1.0)


def within(measured: float, target: float, tolerance: float, two_sided: bool) -> bool:
    """Does a measured fraction of dense meet the target: at most ``target * (1 + tolerance)``, and with
    ``two_sided`` at least ``target * (1 - tolerance)``."""
    if measured > target * (1 + tolerance):
        return False
    return not two_sided or measured >= target * (1 - tolerance)


def target_fraction(budget: Any, problem) -> float:
    """The budget as given (0.5, 50%, 12ms) as a fraction of the problem's dense prediction."""
    from mdp_cli.solve.budget import parse_budget

    return parse_budget(budget, problem.dense_latency, problem.units) / problem.dense_latency


def read_refine(path: str | Path) -> dict[str, Any]:
    """``refine.json``, validated: every field of docs/schemas.md present and of its type."""
    data = read_json(path, SCHEMA, VERSION)

    def fail(field: str, what: str) -> SchemaError:
        return SchemaError(f"{path}: field '{field}' {what}; re-run 'mdp run --refine'")

    if not is_finite_number(data.get("tolerance")) or data["tolerance"] < 0:
        raise fail("tolerance", "must be a number >= 0")
    if not isinstance(data.get("budget"), (str, int, float)) or isinstance(data.get("budget"), bool):
        raise fail("budget", "must be the budget as given (a number or a string)")
    if data.get("outcome") not in ("met", "not_met"):
        raise fail("outcome", "must be 'met' or 'not_met'")
    if not isinstance(data.get("reason"), str) or "\n" in data["reason"]:
        raise fail("reason", "must be one line of text")
    rounds = data.get("rounds")
    if not isinstance(rounds, list) or not rounds:
        raise fail("rounds", "must be a non-empty list")
    for i, entry in enumerate(rounds):
        if not isinstance(entry, dict):
            raise fail(f"rounds[{i}]", "must be an object")
        for key, kind in ROUND_FIELDS.items():
            value = entry.get(key)
            ok = (is_finite_number(value) if kind is float else
                  isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
            if not ok:
                raise fail(f"rounds[{i}].{key}", f"must be {'a number' if kind is float else kind.__name__}")
        if entry["round"] != i + 1:
            raise fail(f"rounds[{i}].round", f"must be {i + 1} (rounds in order)")
    return data


def run_refine(cfg: Mapping[str, Any], run_dir: str | Path, discovered, importance_path: str | Path,
               echo: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """The loop of this module's docstring over a run directory whose problem.json and solution.json the plain
    stages wrote. Writes ``refine/roundK/`` (problem.json, solution.json, exported/, reprofiled.csv + .json),
    the chosen export to ``exported/`` and ``refine.json`` (last); returns the ``refine.json`` record."""
    from mdp_cli.pipeline import family_of_config, stage_export

    rc = cfg["refine"]
    if not cfg["export"]["measure"]:
        raise MdpError("refine.enabled (--refine) measures every export; set export.measure: true or drop --refine")
    run_dir = Path(run_dir)
    summary_path, root = run_dir / "refine.json", run_dir / "refine"
    # the previous loop's record goes first: an interrupted loop leaves no refine.json beside new rounds
    summary_path.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    loop = _Loop(cfg, run_dir, discovered, Path(importance_path), family_of_config(cfg), echo, progress)
    tol, two_sided = float(rc["tolerance"]), bool(rc["two_sided"])
    rounds: list[dict[str, Any]] = []
    seen: list[tuple[dict, dict]] = []
    reason = ""
    for k in range(1, int(rc["rounds"]) + 1):
        rdir = root / f"round{k}"
        rdir.mkdir(parents=True, exist_ok=True)
        try:
            solution, target, budget_solved = loop.first(rdir) if k == 1 else loop.next(rdir, rounds[-1], seen[-1])
        except InfeasibleBudgetError as exc:
            if not rounds:  # the plain solve already succeeded at this budget: not expected
                raise
            reason = loop.infeasible_reason(rounds[-1], exc)
            break
        report = stage_export(cfg, rdir / "solution.json", rdir / "exported", importance_path, discovered,
                              check_budget=False)
        measured, predicted = float(report["measured_fraction"]), float(report["predicted_fraction"])
        met = within(measured, target, tol, two_sided)
        config = (dict(solution["choice"]), dict(solution["blocks"]))
        rounds.append({"round": k, "budget_solved": budget_solved, "predicted_fraction": predicted,
                       "measured_fraction": measured, "rows_reprofiled": loop.reprofiled,
                       "solution": str((rdir / "solution.json").relative_to(run_dir)), "met": met,
                       "target_fraction": target, "objective": float(solution["objective"])})
        echo(f"[refine] round {k}: solved at {budget_solved:.1%}, predicted {predicted:.1%}, measured {measured:.1%} "
             f"of dense (budget {target:.1%} +- {tol:.0%}; {loop.reprofiled} rows re-measured): "
             + ("met" if met else "missed"))
        if met:
            reason = f"round {k} measured {measured:.1%} of dense, within {tol:.0%} of the budget {target:.1%}"
            break
        if config in seen:
            j = seen.index(config) + 1
            side = ("over" if measured > target else "under")
            reason = (f"round {k} chose the configuration of round {j} again (measured {measured:.1%} of dense, "
                      f"{side} the budget {target:.1%} +- {tol:.0%}, solved at {budget_solved:.1%}): with its rows "
                      "re-measured and the budget corrected the solver returns to it, so another round changes "
                      "nothing" + ("; the space has no configuration in between (finer steps would)"
                                   if side == "under" else ""))
            break
        seen.append(config)
        if k == int(rc["rounds"]):
            reason = (f"refine.rounds ({k}) used: the last round measured {measured:.1%} of dense against the "
                      f"budget {target:.1%} +- {tol:.0%} (predicted {predicted:.1%})")
    final = _choose(rounds, tol)
    outcome = "met" if rounds[final]["met"] else "not_met"
    _install(cfg, run_dir, rounds[final], outcome, reason)
    record = {"schema": SCHEMA, "version": VERSION,
              "provenance": provenance(model=cfg["model"], lut=str(loop.lut_path), refine=dict(rc)),
              "tolerance": tol, "budget": cfg["solve"]["budget"], "rounds": rounds, "outcome": outcome,
              "reason": reason, "final_round": rounds[final]["round"]}
    write_json(summary_path, record)
    return record


def _choose(rounds: list[dict[str, Any]], tolerance: float) -> int:
    """The round whose export is kept: of the configurations measured within the budget's upper bound, one
    that met the target band, else the most important; if none is within, the fastest."""
    fitting = [i for i, r in enumerate(rounds) if r["measured_fraction"] <= r["target_fraction"] * (1 + tolerance)]
    if fitting:
        return max(fitting, key=lambda i: (rounds[i]["met"], rounds[i]["objective"], -i))
    return min(range(len(rounds)), key=lambda i: rounds[i]["measured_fraction"])


def _install(cfg: Mapping[str, Any], run_dir: Path, chosen: Mapping[str, Any], outcome: str, reason: str) -> None:
    """Copy the chosen round's export to ``RUN_DIR/exported`` as a unit; its report gains ``refine``: the
    budget as given, and whether the export meets it within ``export.tolerance`` (the run's gate)."""
    from mdp_cli.export.spec import staged_directory

    source = run_dir / Path(chosen["solution"]).parent / "exported"
    target = run_dir / "exported"
    with staged_directory(target) as staging:
        for f in source.iterdir():
            shutil.copy2(f, staging / f.name)
        report = read_json(staging / "report.json", "mdp.export_report", 1)
        report["exported"] = str(target)
        if report.get("onnx"):
            report["onnx"]["path"] = str(target / "model.onnx")
        gate = float(cfg["export"]["tolerance"])
        report["refine"] = {
            "round": chosen["round"], "budget": cfg["solve"]["budget"], "budget_fraction": chosen["target_fraction"],
            "budget_solved": chosen["budget_solved"], "outcome": outcome, "reason": reason,
            "within_tolerance": chosen["measured_fraction"] <= chosen["target_fraction"] * (1 + gate),
            "summary": str(run_dir / "refine.json")}
        write_json(staging / "report.json", report)


class _Loop:
    """The per-round work: re-measuring rows, rebuilding the problem, solving."""

    def __init__(self, cfg, run_dir: Path, discovered, importance: Path, family, echo, progress: bool):
        from mdp_cli.pipeline import lut_location

        self.cfg, self.run_dir, self.discovered, self.importance = cfg, run_dir, discovered, importance
        self.family, self.echo, self.progress = family, echo, progress
        self.lut_path = lut_location(cfg)
        self.fresh: set[tuple[str, str]] = set()  # rows re-measured by this loop
        self.reprofiled = 0

    # -- rounds -------------------------------------------------------------------------------------------
    def first(self, rdir: Path) -> tuple[dict, float, float]:
        """Round 1: the plain run's problem, solved at the budget as given."""
        from mdp_cli.solve import load_problem

        with atomic_path(rdir / "problem.json") as tmp:
            shutil.copyfile(self.run_dir / "problem.json", tmp)
        self.reprofiled = 0
        problem = load_problem(rdir / "problem.json")
        solution = self._solve(rdir, self.cfg["solve"]["budget"])
        return solution, target_fraction(self.cfg["solve"]["budget"], problem), solution["budget"] / solution["dense_latency"]

    def next(self, rdir: Path, last: Mapping[str, Any], config: tuple[dict, dict]) -> tuple[dict, float, float]:
        """Round k > 1: re-measure what the last configuration and the dense one read, correct the budget, solve;
        re-measure what the solution reads and solve again until it reads only re-measured rows."""
        from mdp_cli.latency.to_problem import predicted_latency

        self.reprofiled = 0
        grid = self.cfg["profile"]["grid"]
        self._reprofile(rdir, self.family.rows_used(self.discovered, grid, *config)
                        + self.family.rows_used(self.discovered, grid, {}, {}))
        problem = self._problem(rdir)
        target = target_fraction(self.cfg["solve"]["budget"], problem)
        self.predicted_last = predicted_latency(problem, config[0], config[1]) / problem.dense_latency
        budget = corrected_budget(target, self.predicted_last, last["measured_fraction"], self.cfg["refine"]["tolerance"])
        self.budget = budget
        for _ in range(MAX_PASSES):
            solution = self._solve(rdir, budget)
            if not self._reprofile(rdir, self.family.rows_used(self.discovered, grid, solution["choice"],
                                                                solution["blocks"])):
                break
            problem = self._problem(rdir)
        else:
            solution = self._solve(rdir, budget)
        return solution, target_fraction(self.cfg["solve"]["budget"], problem), budget

    def infeasible_reason(self, last: Mapping[str, Any], exc: Exception) -> str:
        return (f"round {last['round']} measured {last['measured_fraction']:.1%} of dense where the re-measured table "
                f"predicts {self.predicted_last:.1%}; the budget corrected for that ({self.budget:.1%} of the dense "
                f"prediction) cannot be solved ({str(exc).split(';')[0]}): the budget cannot be met in this space "
                "(finer steps, a prunable stem or removable blocks would allow more)")

    # -- helpers ------------------------------------------------------------------------------------------
    def _solve(self, rdir: Path, budget: Any) -> dict[str, Any]:
        from mdp_cli.config import merge
        from mdp_cli.pipeline import stage_solve

        stage_solve(merge(self.cfg, {"solve": {"budget": budget}}), rdir / "problem.json", rdir / "solution.json")
        return read_json(rdir / "solution.json", "mdp.solution", 1)

    def _problem(self, rdir: Path):
        from mdp_cli.pipeline import stage_problem

        return stage_problem(self.cfg, self.importance, rdir / "problem.json", self.discovered)

    def _reprofile(self, rdir: Path, rows: list) -> int:
        """Re-measure ``rows`` this loop has not re-measured yet into ``rdir/reprofiled.csv`` (a LUT of its own,
        whose sidecar keeps the values they replace) and replace them in the shared LUT; returns how many."""
        from mdp_cli.latency.engine import profile_into_lut, with_rounds
        from mdp_cli.latency.timing import check_device
        from mdp_cli.pipeline import open_lut

        todo = {m.key: m for m in rows if m.key not in self.fresh}
        if not todo:
            return 0
        p = self.cfg["profile"]
        shared = open_lut(self.cfg)
        scratch = open_lut(self.cfg, rdir / "reprofiled.csv", create=True)
        previous = _previous(rdir)
        previous += [{"signature": s, "sizes": z, "ms": shared.get(s, z)} for s, z in todo]
        repeats = int(self.cfg["refine"].get("repeats") or 3 * int(p["repeats"]))
        plan = with_rounds(self.family.timing, p.get("rounds"))
        profile_into_lut(scratch, list(todo.values()), plan, check_device(p["device"]), int(p["warmup"]),
                         repeats, label=f"refine {self.discovered.space.model_name}", progress=self.progress)
        scratch.save(last_model=self.discovered.space.model_name, replaced_in=str(shared.path), previous=previous)
        frame = scratch.frame
        new = frame[[key in todo for key in zip(frame["signature"].astype(str), frame["sizes"].fillna("").astype(str))]]
        shared.replace_rows(new, refined_run=str(self.run_dir), refine_round=rdir.name)
        self.fresh.update(todo)
        self.reprofiled += len(todo)
        return len(todo)


def _previous(rdir: Path) -> list[dict[str, Any]]:
    """The replaced values a round's ``reprofiled.json`` sidecar already lists (a round re-measures in passes)."""
    sidecar = rdir / "reprofiled.json"
    if not sidecar.is_file():
        return []
    return list(read_json(sidecar, "mdp.lut", 1)["provenance"].get("previous") or [])
