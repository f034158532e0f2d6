"""ViT stages as library calls: what ``mdp space|profile|score|problem|export|run`` do for a ViT.

``mdp_cli.pipeline`` dispatches on the model family (``mdp_cli.families``) and calls the ``cfg_*``
functions below with the resolved config; ``space_stage`` and ``export_stage`` take explicit arguments.
Latency rows live in the shared LUT (``latency/lut.py``), importance through the shared data pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mdp_cli.artifacts import read_json, write_json
from mdp_cli.errors import MdpError

# ---------------------------------------------------------------------------------------------------
# Library stages
# ---------------------------------------------------------------------------------------------------


def load_vit(model: str, weights: str | None = None, **overrides: Any):
    from mdp_cli.models import create_model

    return create_model(model, pretrained=weights, **{k: v for k, v in overrides.items() if v is not None})


def space_stage(model_name: str, steps: Mapping[str, int] | None = None, weights: str | None = None,
                batch: int = 1, dtype: str = "float32", **overrides: Any):
    from mdp_cli.models import canonical_name
    from mdp_cli.space.vit import build_vit_space

    model = load_vit(model_name, weights, **overrides)
    return model, build_vit_space(model, canonical_name(model_name), steps, batch=batch, dtype=dtype)


def read_importance(path: str | Path) -> dict[str, Any]:
    return read_json(path, "mdp.importance", 1)


def read_solution(path: str | Path) -> tuple[dict[str, int], dict[str, bool]]:
    data = read_json(path, "mdp.solution", 1)
    return _choice_kept(data, path)


def _choice_kept(data: Mapping[str, Any], path: Any) -> tuple[dict[str, int], dict[str, bool]]:
    choice, blocks = data.get("choice"), data.get("blocks", {})
    if not isinstance(choice, dict) or not isinstance(blocks, dict):
        raise MdpError(f"{path}: needs 'choice' (dim -> size) and 'blocks' (block -> kept)")
    return {k: int(v) for k, v in choice.items()}, {k: bool(v) for k, v in blocks.items()}


def export_stage(model, choice: Mapping[str, int], kept: Mapping[str, bool], out: str | Path,
                 importance_path: str | Path | None = None, onnx: bool = False,
                 solution: Mapping[str, Any] | None = None, measure: Mapping[str, Any] | None = None,
                 tolerance: float = 0.1, check_budget: bool = True, **prov: Any) -> Path:
    """Cut, save (and ONNX) the pruned model. With ``measure`` (``{device, dtype, batch, threads,
    warmup, samples}``) time it and the dense model, write ``report.json`` (``mdp.export_report``) and, like the
    CNN export, fail when the measured latency exceeds the solution's budget by more than ``tolerance``."""
    from mdp_cli.export.spec import save_exported
    from mdp_cli.export.vit import export_vit, export_vit_onnx

    importance = read_importance(importance_path)["dims"] if importance_path else None
    pruned, arch = export_vit(model, choice, kept, importance)
    out = Path(out)
    save_exported(out, pruned, arch, **prov)
    if onnx:
        export_vit_onnx(pruned, str(out / "model.onnx"), arch)
    solution = solution or {}
    report: dict[str, Any] = {
        "model": prov.get("source_model"), "exported": str(out), "params": sum(p.numel() for p in pruned.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "predicted_ms": solution.get("predicted_latency"), "budget_ms": solution.get("budget"),
        "tolerance": tolerance, "blocks_removed": sorted(b for b, k in kept.items() if not k),
    }
    if measure:
        import torch

        from mdp_cli.latency.vit_profile import clock_name, measure_against

        import copy

        torch.set_num_threads(int(measure.get("threads", 1)))
        device = measure.get("device", "cpu")
        dtype = getattr(torch, str(measure.get("dtype", "float32")))  # the dtype the LUT was profiled in
        x = torch.randn(int(measure.get("batch", 1)), int(arch["in_chans"]), *arch["img_size"], dtype=dtype)
        timed, dense = copy.deepcopy(pruned).to(dtype), copy.deepcopy(model).to(dtype)
        ms, dense_ms = measure_against(timed, x, dense, x, int(measure.get("warmup", 10)),
                                       int(measure.get("samples", 30)), device)
        del timed, dense
        report.update(measured_ms=ms, measured_dense_ms=dense_ms, clock=clock_name(device), device=device,
                      dtype=str(measure.get("dtype", "float32")))
        if report["predicted_ms"]:
            report["prediction_error"] = report["predicted_ms"] / ms - 1
        if report["budget_ms"] is not None:
            report["within_tolerance"] = ms <= float(report["budget_ms"]) * (1 + tolerance)
    write_json(out / "report.json", {"schema": "mdp.export_report", "version": 1, "provenance": {}, **report})
    if check_budget and report.get("within_tolerance") is False:
        raise MdpError(f"measured latency {report['measured_ms']:.3f} ms misses the budget {report['budget_ms']:.3f} ms "
                       f"by more than {tolerance:.0%} (predicted {report['predicted_ms']:.3f} ms); model written to {out}")
    return out


# ---------------------------------------------------------------------------------------------------
# The same stages over a resolved config (mdp_cli.families.resolve_config), as mdp_cli.pipeline calls them
# ---------------------------------------------------------------------------------------------------


class VitAnalysis:
    """What ``mdp_cli.pipeline.discover`` returns for a ViT beside the model: the space (as for a CNN)."""

    def __init__(self, space):
        self.space = space


def model_overrides(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (("img_size", cfg.get("resolution")), ("num_classes", cfg.get("num_classes")))
            if v is not None}


def cfg_discover(cfg: Mapping[str, Any]):
    p = cfg["profile"]
    model, space = space_stage(cfg["model"], cfg["space"].get("steps"), cfg.get("pretrained"), batch=int(p["batch"]),
                               dtype=p["dtype"], **model_overrides(cfg))
    return model, VitAnalysis(space)


def cfg_profile(cfg: Mapping[str, Any], space, lut_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Measure the space's sub-grid rows that the shared LUT at ``lut_path`` lacks (``latency/lut.py``)."""
    import sys

    from mdp_cli.latency.lut import Lut
    from mdp_cli.latency.timing import canonical_dtype, check_device, device_name
    from mdp_cli.latency.vit_profile import profile_into_lut

    p = cfg["profile"]
    device, dtype = check_device(p["device"]), canonical_dtype(p["dtype"])
    lut = Lut.open(lut_path, device_name(device), dtype, int(p["batch"]), int(p["threads"]))
    report = (lambda s: print(s, file=sys.stderr)) if progress else None
    summary = profile_into_lut(space, lut, device, p["grid"], int(p["warmup"]), int(p["repeats"]), int(p["threads"]),
                               progress=report)
    return {"lut": str(lut_path), **summary, "device": lut.device, "dtype": dtype, "batch": p["batch"],
            "threads": p["threads"]}


def cfg_score(cfg: Mapping[str, Any], out: str | Path, model, space) -> dict[str, Any]:
    """Taylor importance on batches of the shared data pipeline (``scoring_batches``: ``builtin:NAME``,
    train/val directories, a flat ImageFolder, or ``synthetic``)."""
    import time

    from torch import nn

    from mdp_cli.importance.taylor import scoring_batches
    from mdp_cli.importance.vit import vit_importance

    s = cfg["score"]
    t0 = time.perf_counter()
    batches = scoring_batches(str(s["data"]), space.input_shape[1], int(s["batch_size"]), int(s["batches"]),
                              int(s["seed"]), int(getattr(model, "num_classes", 1000)))

    def loss(out, labels):  # labels of a data set with more classes than the model: folded, as the CNN scorer does
        return nn.functional.cross_entropy(out, labels % out.shape[1])

    record = vit_importance(model, batches, space, max_batches=int(s["batches"]), loss_fn=loss,
                            device=cfg["profile"]["device"])
    record["provenance"].update(data=str(s["data"]), batch_size=int(s["batch_size"]), resolution=space.input_shape[1],
                                synthetic=str(s["data"]) == "synthetic", steps=cfg["space"].get("steps"))
    write_json(out, record)
    return {"importance": str(out), "batches": record["provenance"].get("batches"), "seconds": time.perf_counter() - t0}


def cfg_problem(cfg: Mapping[str, Any], space, lut, importance_path: str | Path | None, out: str | Path):
    """``lut``: the shared ``latency.lut.Lut`` (opened for the config's device, dtype, batch, threads, stat)."""
    from mdp_cli.latency.vit_profile import rows_from_lut, vit_tables
    from mdp_cli.space.vit import vit_problem

    if importance_path is None:
        raise MdpError(f"a ViT problem needs --importance (from 'mdp score --model {cfg['model']}')")
    tables = vit_tables(space, {"rows": rows_from_lut(lut, space)})
    problem = vit_problem(space, tables, read_importance(importance_path), lut_file=str(lut.path),
                          importance_file=str(importance_path), device=lut.device, stat=lut.stat)
    problem.save(out)
    return problem


def cfg_export(cfg: Mapping[str, Any], solution: Mapping[str, Any], src: str, out_dir: str | Path,
               importance_path: str | Path | None, model, space, check_budget: bool) -> dict[str, Any]:
    p, e = cfg["profile"], cfg["export"]
    choice, kept = _choice_kept(solution, src) if solution else ({}, {})
    measure = ({"device": p["device"], "dtype": p["dtype"], "batch": p["batch"], "threads": p["threads"],
                "warmup": p["warmup"], "samples": e["repeats"]} if e["measure"] else None)
    export_stage(model, choice, kept, out_dir, importance_path, onnx=bool(e["onnx"]), solution=solution,
                 measure=measure, tolerance=float(e["tolerance"]), check_budget=check_budget,
                 source_model=cfg["model"], solution_file=src)
    return read_json(Path(out_dir) / "report.json", "mdp.export_report", 1)
