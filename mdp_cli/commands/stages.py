"""Click commands for space, profile, score, problem, calibrate, export and run (thin: each calls mdp_cli.pipeline).

One command per stage for every model family: ``mdp_cli.pipeline`` asks the model's family
(``mdp_cli.families``) for the family-specific part; a flag that only another family understands is a
one-line error (``mdp_cli.config``).
Every command takes ``--config FILE`` (YAML, see configs/) and flags that override its keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from mdp_cli import pipeline
from mdp_cli.importance.normalize import NORMALIZE_MODES

NORMALIZE_HELP = ("Scale every dim's scores before the solver weighs dims against each other: none, each dim's total "
                  "to 1 (sum: a narrow layer weighs like a wide one), or its mean per unit to 1 (mean); "
                  "see docs/results.md.")
COUPLED_HELP = ("How a dim shared by several layers (a residual width, a ViT embedding) combines their scores: "
                "sum, mean, or sum / sqrt(count) (default: the model family's, see docs/results.md).")


def _model_options(fn: Callable) -> Callable:
    options = [
        click.option("--config", "-c", "config", type=click.Path(dir_okay=False, path_type=Path),
                     help="YAML config (configs/*.yaml); flags override its keys."),
        click.option("--model", "-m", help="Model name (torchvision/timm), e.g. resnet50, deit_base."),
        click.option("--resolution", "-r", "--img-size", "resolution", type=int,
                     help="Input resolution (square; a ViT's default is its own img_size)."),
        click.option("--pretrained", "--weights", "pretrained", type=click.Path(dir_okay=False),
                     help="Local weights (safetensors or torch weights-only)."),
        click.option("--random-init", is_flag=True, default=None,
                     help="No weights: prune a randomly initialised model (seeded; smoke tests, latency work)."),
        click.option("--num-classes", type=int, help="Classifier size (default: the model's, or the checkpoint's)."),
        click.option("--step", type=int, help="CNN: channels per option step (default: size / max-options)."),
        click.option("--max-options", type=int, help="CNN: options per dim when --step is not given."),
        click.option("--multiple", type=int, help="CNN: restrict widths to multiples of this (e.g. 8)."),
        click.option("--prune-stem/--keep-stem", default=None, help="CNN: let the stem's output width be pruned (default), or keep it (the paper's rule)."),
        click.option("--steps", help="ViT: units per option step, e.g. embed=16,heads=1,qk=8,v=8,mlp=64."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _profile_options(fn: Callable) -> Callable:
    options = [
        click.option("--device", help="cpu or cuda[:N]."),
        click.option("--dtype", help="float32 | float16 | bfloat16."),
        click.option("--batch", type=int, help="Batch size the latency is measured at."),
        click.option("--threads", type=int, help="CPU intra-op threads (default 1)."),
        click.option("--lut-dir", type=click.Path(file_okay=False), help="Directory of LUT CSVs (default luts/)."),
        click.option("--stat", type=click.Choice(["median", "p10", "ref"]),
                     help="Latency statistic read from the LUT (ref: each row relative to the reference op, drift-normalised)."),
        click.option("--runtime", type=click.Choice(["eager", "onnxruntime", "tensorrt"]),
                     help="Runtime the latency is measured in (default eager PyTorch; its own LUT file)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(config: Path | None, kw: dict[str, Any], weights: bool = False) -> dict[str, Any]:
    """The validated config of ``config`` with the flags in ``kw`` on top; ``weights``: the stage's result
    depends on the weights (score, export), so they are checked and where they come from is said."""
    top = {k: kw.pop(k) for k in ("model", "resolution", "pretrained", "random_init", "num_classes") if k in kw}
    space = {k: kw.pop(k) for k in ("step", "max_options", "multiple", "prune_stem", "steps") if k in kw}
    profile = {k: kw.pop(k) for k in ("device", "dtype", "batch", "threads", "lut_dir", "stat", "warmup", "repeats", "rounds", "grid",
                                      "runtime") if k in kw}
    over: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
    # a weights flag replaces the config's choice of weights: --pretrained clears random_init and vice versa
    if top.get("pretrained") and not top.get("random_init"):
        over["random_init"] = False
    elif top.get("random_init") and not top.get("pretrained"):
        over["pretrained"] = ""
    over["space"] = {k: v for k, v in space.items() if v is not None}
    over["profile"] = {k: v for k, v in profile.items() if v is not None}
    refine = {"enabled": kw.pop("refine", None), "rounds": kw.pop("refine_rounds", None),
              "tolerance": kw.pop("refine_tolerance", None)}
    over["refine"] = {k: v for k, v in refine.items() if v is not None}
    calibrate = {"configs": kw.pop("calibrate_configs", None), "file": kw.pop("calibration", None),
                 "seed": kw.pop("calibrate_seed", None), "repeats": kw.pop("calibrate_repeats", None)}
    over["calibrate"] = {k: str(v) if k == "file" else v for k, v in calibrate.items() if v is not None}
    for section, keys in (("score", ("data", "batches", "batch_size", "seed", "objective", "criterion", "coupled", "normalize")), ("solve", ("budget", "sweep")),
                          ("export", ("tolerance", "onnx", "measure"))):
        over[section] = {k: kw.pop(k) for k in keys if kw.get(k) is not None}
    cfg = pipeline.load_config(config, over)
    if weights:
        pipeline.check_weights(cfg)
        click.echo(pipeline.weights_note(cfg), err=True)
    return cfg


@click.command("space")
@_model_options
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the space as JSON.")
def space_command(config, json_out, **kw):
    """Discover and print a model's pruning space: dims, sizes, steps, couplings, blocks."""
    cfg = _config(config, kw)
    space = pipeline.discover(cfg).space
    click.echo(space.describe())
    if json_out:
        from mdp_cli.artifacts import provenance, write_json

        write_json(json_out, {"schema": "mdp.space", "version": 1, "provenance": provenance(model=cfg["model"]),
                              **space.to_dict()})
        click.echo(f"wrote {json_out}")


@click.command("profile")
@_model_options
@_profile_options
@click.option("--warmup", type=int, help="Warm-up calls per configuration (default 10).")
@click.option("--repeats", type=int, help="Timed calls per configuration (default 30; median reported).")
@click.option("--rounds", type=int, help="Passes over all rows, the repeats split among them (default: the family's, "
                                         "CNN 2, ViT 3); on a shared machine e.g. --rounds 8 --repeats 120.")
@click.option("--grid", help="CNN: measure every N-th option only; ViT: points per dim, e.g. embed=5,heads=4,qk=3,v=3,hidden=5. "
                             "The problem builder interpolates between.")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), help="Write to this LUT CSV instead of lut-dir/<device>.")
@click.option("--shard", help="i/n: measure only the i-th of n disjoint parts of the rows (several machines, one LUT).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def profile_command(config, lut_path, shard, quiet, **kw):
    """Measure every latency term over its dims' options into a LUT CSV (reusing rows already measured)."""
    from mdp_cli.latency.engine import parse_shard

    shard = parse_shard(shard)
    cfg = _config(config, kw)
    summary = pipeline.stage_profile(cfg, progress=not quiet, lut_path=lut_path, shard=shard)
    part = f", shard {shard[0]}/{shard[1]} ({summary['other_shards']} rows left to other shards)" if shard else ""
    widths = f", widths in multiples of {cfg['space']['multiple']}" if cfg["space"].get("multiple", 1) > 1 else ""
    rechecked = f" ({summary['rechecked']} re-timed: their passes disagreed)" if summary.get("rechecked") else ""
    click.echo(f"LUT {summary['lut']}: {summary['measured']} configurations measured{rechecked}, {summary['reused']} reused, "
               f"{summary['seconds']:.1f} s on {summary['device']} ({summary['dtype']}, batch {summary['batch']}, "
               f"{summary['threads']} thread(s), runtime {summary['runtime']}{widths}){part}")


@click.command("score")
@_model_options
@click.option("--data", help="builtin:fashion-mnist[?train=N], builtin:digits, a directory with train/val, an ImageFolder "
                             "directory, or 'synthetic' (random images, smoke tests only).")
@click.option("--batches", type=int, help="Number of batches to accumulate scores over.")
@click.option("--batch-size", type=int, help="Images per batch.")
@click.option("--seed", type=int)
@click.option("--objective", type=click.Choice(["labels", "pseudo_labels", "distill", "features"]),
              help="Loss scored: the data's labels, the dense model's own predictions (argmax), the KL to its "
                   "output distribution (distill, label-free), or its features.")
@click.option("--criterion", type=click.Choice(["taylor", "fisher"]), help="First-order Taylor or Fisher (squared gradients).")
@click.option("--coupled", type=click.Choice(["sum", "mean", "sqrt"]), help=COUPLED_HELP)
@click.option("--normalize", type=click.Choice(NORMALIZE_MODES), help=NORMALIZE_HELP)
@click.option("--device", help="Device for the forward/backward passes.")
@click.option("--output", "-o", "--out", "output", type=click.Path(dir_okay=False, path_type=Path), default=Path("importance.json"),
              show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def score_command(config, output, quiet, **kw):
    """First-order Taylor importance into an importance JSON (CNN: BN parameters; ViT: heads, q/k, v, MLP, embedding)."""
    cfg = _config(config, kw, weights=True)
    summary = pipeline.stage_score(cfg, output, progress=False if quiet else None)
    note = " (synthetic data: scores are meaningless)" if cfg["score"]["data"] == "synthetic" else ""
    sc = cfg["score"]
    click.echo(f"wrote {output}: {summary['batches']} batches in {summary['seconds']:.1f} s (objective "
               f"{sc['objective']}, criterion {sc['criterion']}, coupled {sc['coupled']}, normalize "
               f"{sc['normalize']}){note}")


@click.command("problem")
@_model_options
@_profile_options
@click.option("--importance", type=click.Path(dir_okay=False, path_type=Path),
              help="Importance JSON from 'mdp score' (omit for a latency-only problem).")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), help="LUT CSV (default: lut-dir/<this device>).")
@click.option("--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Calibration JSON from 'mdp calibrate': the in-network correction of the LUT's terms.")
@click.option("--output", "-o", "--out", "output", type=click.Path(dir_okay=False, path_type=Path), default=Path("problem.json"),
              show_default=True)
def problem_command(config, importance, lut_path, output, **kw):
    """Build the solver's problem file from space + LUT + importance."""
    cfg = _config(config, kw)
    problem = pipeline.stage_problem(cfg, importance, output, lut_path=lut_path)
    click.echo(f"wrote {output}: {len(problem.dims)} dims, {len(problem.terms)} terms, {len(problem.blocks)} blocks, "
               f"dense latency {problem.dense_latency:.3f} ms")


@click.command("calibrate")
@_model_options
@_profile_options
@click.option("--warmup", type=int, help="Warm-up calls per model (default 10).")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False), help="LUT CSV (default: lut-dir/<this device>).")
@click.option("--configs", "calibrate_configs", type=int,
              help="Pruned configurations exported and timed in turns with the dense model (default 16, at least 4).")
@click.option("--seed", "calibrate_seed", type=int, help="Which configurations (default 0).")
@click.option("--repeats", "calibrate_repeats", type=int, help="Timed calls per model (default: profile.repeats, 30).")
@click.option("--output", "-o", "--out", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("calibration.json"), show_default=True)
def calibrate_command(config, lut_path, output, **kw):
    """Fit how the LUT's terms, timed one by one, add up inside the whole network (docs/latency.md)."""
    cfg = _config(config, kw)
    calibration = pipeline.stage_calibrate(cfg, output, lut_path=lut_path, echo=click.echo)
    click.echo(f"wrote {output}: {pipeline.calibration_summary(calibration)}")


@click.command("export")
@_model_options
@_profile_options
@click.option("--solution", "-s", type=click.Path(dir_okay=False, path_type=Path),
              help="Solution JSON from 'mdp solve' (omit: export the dense model in the same format).")
@click.option("--importance", type=click.Path(dir_okay=False, path_type=Path), help="Importance JSON (channel order).")
@click.option("--output", "-o", "--out", "output", type=click.Path(file_okay=False, path_type=Path), default=Path("exported"), show_default=True)
@click.option("--onnx/--no-onnx", default=None, help="Also write model.onnx and check it against PyTorch.")
@click.option("--tolerance", type=float, help="Allowed overshoot of the budget by the measured latency (0.2 = 20%).")
@click.option("--measure/--no-measure", default=None, help="Measure the exported model's latency (default on).")
def export_command(config, solution, importance, output, **kw):
    """Cut the physically smaller model; report params, FLOPs, measured vs predicted latency; gate on budget."""
    cfg = _config(config, kw, weights=True)
    report = pipeline.stage_export(cfg, solution, output, importance, check_budget=False)
    click.echo(pipeline.format_report(report))
    click.echo(f"wrote {output}/arch.json, model.safetensors, report.json")
    if report.get("within_tolerance") is False:
        from mdp_cli.errors import MdpError

        raise MdpError(pipeline.missed_budget_message(report))


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default runs/<config name>).")
@click.option("--force", is_flag=True, help="Re-run every stage even if its inputs did not change.")
@click.option("--budget", help="Override solve.budget (0.5, 50%, 12ms).")
@click.option("--sweep", help="Override solve.sweep: also solve every budget of start:stop:step (0.3:0.9:0.1) or "
                              "a comma list into sweep.json (the Pareto front of 'mdp report').")
@click.option("--model", "-m")
@click.option("--resolution", "-r", type=int)
@click.option("--pretrained", "--weights", "pretrained", type=click.Path(dir_okay=False),
              help="Local weights (safetensors, torch weights-only, or builtin:NAME).")
@click.option("--random-init", is_flag=True, default=None, help="No weights: a randomly initialised model (seeded).")
@click.option("--num-classes", type=int, help="Classifier size (default: the model's, or the checkpoint's).")
@click.option("--data")
@click.option("--coupled", type=click.Choice(["sum", "mean", "sqrt"]), help=COUPLED_HELP)
@click.option("--normalize", type=click.Choice(NORMALIZE_MODES), help=NORMALIZE_HELP)
@click.option("--device")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--no-gate", is_flag=True, help="Exit 0 even when the measured latency misses the budget.")
@click.option("--refine/--no-refine", default=None,
              help="Close the loop: measure the export, re-measure the LUT rows it reads, re-solve with a corrected "
                   "budget, re-export, until the measured latency meets the budget (docs/refine.md).")
@click.option("--refine-rounds", type=int, help="Most refine rounds, the first export included (default 3).")
@click.option("--refine-tolerance", type=float,
              help="Refine until the measured fraction of dense is within this of the budget (default 0.1).")
@click.option("--calibrate-configs", type=int,
              help="Pruned configurations timed to calibrate the LUT in-network (default 16; 0: off).")
def run_command(config, run_dir, force, quiet, no_gate, **kw):
    """Run profile -> score -> problem -> solve -> export (--refine: the closed loop) from CONFIG, skipping
    unchanged stages."""
    cfg = _config(config, kw)
    pipeline.check_weights(cfg)  # before the run directory is made (run_pipeline says where they come from)
    run_dir = run_dir or Path("runs") / config.stem
    from mdp_cli.artifacts import write_json

    write_json(run_dir / "config.json", {"schema": "mdp.config", "version": 1, "provenance": {}, "config": cfg})
    pipeline.run_pipeline(cfg, run_dir, echo=click.echo, force=force, progress=not quiet, check_budget=not no_gate)


@click.command("families")
def families_command():
    """List the registered model families (each one module behind mdp_cli.families.Family)."""
    from mdp_cli.families import all_families

    for family in all_families():
        click.echo(family.describe())


COMMANDS = [families_command, space_command, profile_command, score_command, problem_command, calibrate_command,
            export_command, run_command]
