"""ViT stages as library calls and as click commands (``mdp vit space|profile|score|problem|export|run``).

Each ``*_stage`` function is what the family-dispatching ``mdp`` commands call for a ViT; each writes one
artifact atomically and returns its path. ``run_vit_pipeline`` runs them in order from a config dict
(the YAML files under ``configs/``) inside a run directory, skipping a stage whose output exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from mdp_cli.artifacts import read_json, write_json
from mdp_cli.errors import MdpError

MODEL_KEYS = ("img_size", "num_classes")


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


def profile_stage(space, out: str | Path, device: str = "cpu", grid: Mapping[str, int] | None = None,
                  warmup: int = 10, samples: int = 30, threads: int = 1, progress: Callable | None = None) -> Path:
    from mdp_cli.latency.vit_profile import profile_vit, save_lut

    lut = profile_vit(space, device=device, grid=grid, warmup=warmup, samples=samples, threads=threads,
                      progress=progress)
    save_lut(out, lut)
    return Path(out)


def data_loader(data: str, img_size: int, batch_size: int = 32, num_classes: int = 1000, batches: int = 4,
                seed: int = 0):
    """``data`` is an ImageFolder directory, or ``synthetic`` (random images and labels, for smoke runs)."""
    import torch

    if data == "synthetic":
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(batch_size, 3, img_size, img_size, generator=g),
                 torch.randint(0, num_classes, (batch_size,), generator=g)) for _ in range(batches)]
    from torchvision import datasets, transforms

    if not Path(data).is_dir():
        raise MdpError(f"{data}: not a directory (expected an ImageFolder: one sub-folder of images per class)")
    tf = transforms.Compose([
        transforms.Resize(int(img_size * 256 / 224)), transforms.CenterCrop(img_size), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    dataset = datasets.ImageFolder(data, tf)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def score_stage(model, space, loader, out: str | Path, batches: int | None = None, device: str = "cpu") -> Path:
    from mdp_cli.importance.vit import vit_importance

    write_json(out, vit_importance(model, loader, space, max_batches=batches, device=device))
    return Path(out)


def read_importance(path: str | Path) -> dict[str, Any]:
    return read_json(path, "mdp.importance", 1)


def problem_stage(space, lut_path: str | Path, importance_path: str | Path, out: str | Path) -> Path:
    from mdp_cli.latency.vit_profile import load_lut, vit_tables
    from mdp_cli.space.vit import vit_problem

    lut = load_lut(lut_path)
    tables = vit_tables(space, lut)
    problem = vit_problem(space, tables, read_importance(importance_path),
                          lut_file=str(lut_path), importance_file=str(importance_path),
                          device=lut["provenance"].get("device"))
    problem.save(out)
    return Path(out)


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
    """Cut, save (and ONNX) the pruned model. With ``measure`` (``{device, batch, threads, warmup,
    samples}``) time it and the dense model, write ``report.json`` (``mdp.export_report``) and, like the
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
        "exported": str(out), "params": sum(p.numel() for p in pruned.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "predicted_ms": solution.get("predicted_latency"), "budget_ms": solution.get("budget"),
        "tolerance": tolerance, "blocks_removed": sorted(b for b, k in kept.items() if not k),
    }
    if measure:
        import torch

        from mdp_cli.latency.vit_profile import clock_name, measure_against

        torch.set_num_threads(int(measure.get("threads", 1)))
        device = measure.get("device", "cpu")
        x = torch.randn(int(measure.get("batch", 1)), int(arch["in_chans"]), *arch["img_size"])
        ms, dense_ms = measure_against(pruned, x, model, x, int(measure.get("warmup", 10)),
                                       int(measure.get("samples", 30)), device)
        report.update(measured_ms=ms, measured_dense_ms=dense_ms, clock=clock_name(device), device=device)
        if report["predicted_ms"]:
            report["prediction_error"] = report["predicted_ms"] / ms - 1
        if report["budget_ms"] is not None:
            report["within_tolerance"] = ms <= float(report["budget_ms"]) * (1 + tolerance)
    write_json(out / "report.json", {"schema": "mdp.export_report", "version": 1, "provenance": {}, **report})
    if check_budget and report.get("within_tolerance") is False:
        raise MdpError(f"measured latency {report['measured_ms']:.3f} ms misses the budget {report['budget_ms']:.3f} ms "
                       f"by more than {tolerance:.0%} (predicted {report['predicted_ms']:.3f} ms); model written to {out}")
    return out


def run_vit_pipeline(config: Mapping[str, Any], run_dir: str | Path, solver: Callable | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Path]:
    """space -> profile -> score -> problem -> solve -> export, in ``run_dir``. A stage whose artifact
    exists is skipped (delete it to redo). ``solver(problem, budget) -> Solution`` defaults to
    ``mdp_cli.solve.solve_problem``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    m = config.get("model")
    if not m:
        raise MdpError("config: 'model' is required (e.g. deit_tiny)")
    overrides = {k: config[k] for k in MODEL_KEYS if k in config}
    sp = config.get("space", {})
    prof = config.get("profile", {})
    model, space = space_stage(m, sp.get("steps"), config.get("weights"), batch=int(prof.get("batch", 1)),
                               dtype=prof.get("dtype", "float32"), **overrides)
    paths = {"lut": run_dir / "lut.csv", "importance": run_dir / "importance.json",
             "problem": run_dir / "problem.json", "solution": run_dir / "solution.json", "export": run_dir / "pruned"}
    if not paths["lut"].exists():
        log("profile ...")
        profile_stage(space, paths["lut"], prof.get("device", "cpu"), prof.get("grid"), int(prof.get("warmup", 10)),
                      int(prof.get("samples", 30)), int(prof.get("threads", 1)))
    sc = config.get("score", {})
    if not paths["importance"].exists():
        log("score ...")
        img = space.input_shape[1]
        loader = data_loader(sc.get("data", "synthetic"), img, int(sc.get("batch_size", 32)),
                             int(overrides.get("num_classes", 1000)), int(sc.get("batches", 4)))
        score_stage(model, space, loader, paths["importance"], sc.get("batches"))
    if not paths["problem"].exists():
        log("problem ...")
        problem_stage(space, paths["lut"], paths["importance"], paths["problem"])
    if not paths["solution"].exists():
        log("solve ...")
        from mdp_cli.solve.problem import load_problem

        if solver is None:
            try:
                from mdp_cli.solve import solve_problem as solver
            except ImportError:
                raise MdpError("the solver (mdp_cli.solve.solve_problem) is not available in this build") from None
        problem = load_problem(paths["problem"])
        solution = solver(problem, config.get("solve", {}).get("budget", 0.5))
        if hasattr(solution, "save"):
            solution.save(paths["solution"])
        else:
            write_json(paths["solution"], {"schema": "mdp.solution", "version": 1, "provenance": {},
                                           "choice": dict(solution.choice), "blocks": dict(solution.kept),
                                           **{k: getattr(solution, k) for k in ("predicted_latency", "budget")
                                              if hasattr(solution, k)}})
    if not (paths["export"] / "arch.json").exists():
        log("export ...")
        sol = read_json(paths["solution"], "mdp.solution", 1)
        choice, kept = _choice_kept(sol, paths["solution"])
        ex = config.get("export", {})
        measure = {**prof, "samples": ex.get("samples", prof.get("samples", 30))} if ex.get("measure", True) else None
        export_stage(model, choice, kept, paths["export"], paths["importance"], onnx=bool(ex.get("onnx", False)),
                     solution=sol, measure=measure, tolerance=float(ex.get("tolerance", 0.1)),
                     check_budget=bool(ex.get("gate", True)), source_model=m)
    return paths


# ---------------------------------------------------------------------------------------------------
# click commands
# ---------------------------------------------------------------------------------------------------


def _steps(spec: str | None) -> dict[str, int] | None:
    if not spec:
        return None
    try:
        return {k.strip(): int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    except ValueError:
        raise MdpError(f"--steps {spec!r}: expected e.g. embed=16,heads=1,qk=8,v=8,mlp=64") from None


model_options = [
    click.option("--model", required=True, help="timm ViT name or alias (deit_base = deit_base_patch16_224)"),
    click.option("--weights", default=None, help="local weights (safetensors or weights-only torch file)"),
    click.option("--img-size", type=int, default=None),
    click.option("--num-classes", type=int, default=None),
    click.option("--steps", default=None, help="chunk sizes, e.g. embed=16,heads=1,qk=8,v=8,mlp=64"),
]


def with_model(fn):
    for opt in reversed(model_options):
        fn = opt(fn)
    return fn


@click.group("vit")
def vit_group() -> None:
    """Vision-transformer stages (timm DeiT / ViT)."""


@vit_group.command("space")
@with_model
def space_cmd(model, weights, img_size, num_classes, steps):
    """Print the pruning space (dims, blocks, latency terms) as JSON."""
    from mdp_cli.space.vit import space_summary

    _, space = space_stage(model, _steps(steps), weights, img_size=img_size, num_classes=num_classes)
    click.echo(json.dumps(space_summary(space), indent=1))


@vit_group.command("profile")
@with_model
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--device", default="cpu")
@click.option("--batch", type=int, default=1)
@click.option("--dtype", default="float32")
@click.option("--grid", default=None, help="sub-grid points per dim, e.g. embed=5,heads=4,qk=3,v=3,hidden=5")
@click.option("--samples", type=int, default=30)
@click.option("--warmup", type=int, default=10)
def profile_cmd(model, weights, img_size, num_classes, steps, out, device, batch, dtype, grid, samples, warmup):
    """Measure the ViT latency tables (LUT CSV + JSON sidecar)."""
    _, space = space_stage(model, _steps(steps), weights, batch=batch, dtype=dtype, img_size=img_size,
                           num_classes=num_classes)
    profile_stage(space, out, device, _steps(grid), warmup, samples, progress=lambda s: click.echo(s, err=True))
    click.echo(out)


@vit_group.command("score")
@with_model
@click.option("--data", required=True, help="ImageFolder directory, or 'synthetic'")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", type=int, default=32)
@click.option("--batches", type=int, default=None, help="stop after this many batches (default: one epoch)")
@click.option("--device", default="cpu")
def score_cmd(model, weights, img_size, num_classes, steps, data, out, batch_size, batches, device):
    """Taylor importance per head, q/k column, v column, MLP neuron and embedding channel."""
    m, space = space_stage(model, _steps(steps), weights, img_size=img_size, num_classes=num_classes)
    loader = data_loader(data, space.input_shape[1], batch_size, num_classes or 1000, batches or 4)
    score_stage(m, space, loader, out, batches, device)
    click.echo(out)


@vit_group.command("problem")
@with_model
@click.option("--lut", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--importance", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--batch", type=int, default=1)
def problem_cmd(model, weights, img_size, num_classes, steps, lut, importance, out, batch):
    """Build the solver's problem (mdp.problem JSON) from the space, LUT and importance."""
    _, space = space_stage(model, _steps(steps), weights, batch=batch, img_size=img_size, num_classes=num_classes)
    problem_stage(space, lut, importance, out)
    click.echo(out)


@vit_group.command("export")
@with_model
@click.option("--solution", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--importance", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ranks the units to keep (default: weight magnitude)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--onnx/--no-onnx", default=False)
@click.option("--measure/--no-measure", default=False, help="time the pruned model and gate on the budget")
@click.option("--device", default="cpu")
@click.option("--batch", type=int, default=1)
@click.option("--tolerance", type=float, default=0.1, help="allowed excess of measured latency over the budget")
@click.option("--no-gate", "gate", flag_value=False, default=True, help="exit 0 even when the budget is missed")
def export_cmd(model, weights, img_size, num_classes, steps, solution, importance, out, onnx, measure, device, batch,
               tolerance, gate):
    """Cut the pruned model (arch.json + model.safetensors [+ model.onnx])."""
    m = load_vit(model, weights, img_size=img_size, num_classes=num_classes)
    sol = read_json(solution, "mdp.solution", 1)
    choice, kept = _choice_kept(sol, solution)
    export_stage(m, choice, kept, out, importance, onnx, solution=sol,
                 measure={"device": device, "batch": batch} if measure else None, tolerance=tolerance,
                 check_budget=gate, source_model=model, solution_file=str(solution))
    click.echo(out)


@vit_group.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
def run_cmd(config, run_dir):
    """Run the ViT pipeline from a YAML config."""
    import yaml

    cfg = yaml.safe_load(Path(config).read_text()) or {}
    for name, path in run_vit_pipeline(cfg, run_dir, log=lambda s: click.echo(s, err=True)).items():
        click.echo(f"{name}: {path}")
