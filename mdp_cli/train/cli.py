"""``mdp eval`` and ``mdp finetune``: click options mapped one to one onto the library functions."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import click

from mdp_cli.errors import MdpError

DATA_HELP = "ImageFolder root (DIR/train, DIR/val) or builtin:NAME[?train=N&val=M], e.g. builtin:fashion-mnist"


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """--config FILE: YAML values become the defaults, so flags on the command line override them."""
    if value is None:
        return None
    import yaml

    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{value}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise click.BadParameter(f"{value}: expected a mapping of option names to values")
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(values) - known)
    if unknown:
        raise click.BadParameter(f"{value}: unknown keys {unknown} (keys are option names with '_', e.g. batch_size)")
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _model_options(command):
    """The options that say how to build MODEL when it is a dense model name (shared by eval and finetune)."""
    for option in reversed([
        click.option("--pretrained", type=click.Path(dir_okay=False),
                     help="Weights for a dense model name: a local file (its class count is used) or "
                          "builtin:efficientnet-lite0."),
        click.option("--num-classes", type=int,
                     help="Classifier size (default: the weights' or the export's; finetune replaces a different "
                          "head)."),
        click.option("--img-size", type=int,
                     help="Input resolution (default: the export's arch.json, else the model's)."),
    ]):
        command = option(command)
    return command


@click.command("eval")
@click.argument("model")
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@_model_options
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--limit", type=int, help="Evaluate a fixed subset of this many images.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--amp", type=click.Choice(["off", "auto", "fp16", "bf16"]), default="off", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the metrics as JSON here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def eval_command(model, data, split, pretrained, num_classes, img_size, batch_size, limit, workers, device, amp,
                 output, no_progress):
    """Top-1/top-5 accuracy, loss and throughput of MODEL (an exported directory or a dense model name)."""
    from mdp_cli.train.engine import evaluate

    result = evaluate(model, data, split=split, pretrained=pretrained, num_classes=num_classes, img_size=img_size,
                      batch_size=batch_size, limit=limit, num_workers=workers, device=device, amp=amp,
                      output=output, progress=not no_progress, log=lambda line: click.echo(line, err=True))
    click.echo(f"{model} on {data} [{split}]: top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
               f"loss {result['loss']:.4f}  {result['images_per_s']:.0f} images/s  ({result['images']} images)")


@click.command("finetune")
@click.argument("model")
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, is_eager=True, expose_value=False,
              help="YAML preset (configs/*.yaml); flags override its values.")
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch (all processes).")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=float, help="Learning rate (overrides --lr-per-1024).")
@click.option("--lr-per-1024", type=float, default=0.4, show_default=True,
              help="Learning rate per 1024 images of global batch (scaled linearly).")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov/--no-nesterov", default=False, show_default=True)
@click.option("--weight-decay", type=float, default=5e-5, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine", show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Final lr as a fraction of the peak.")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--clip-grad", type=float, help="Clip the global gradient norm to this value.")
@click.option("--ema-decay", type=float, help="Keep an EMA of the weights with this decay (e.g. 0.9998).")
@click.option("--amp", type=click.Choice(["auto", "off", "fp16", "bf16"]), default="auto", show_default=True,
              help="auto: fp16 autocast + grad scaler on CUDA, off on CPU.")
@click.option("--kd", type=click.Choice(["none", "soft", "hard"]), default="none", show_default=True,
              help="Distil from --teacher: soft KL with temperature, or hard labels (DeiT distillation token).")
@click.option("--teacher", help="Teacher: exported/finetuned directory, or dense model name with --teacher-pretrained.")
@click.option("--teacher-pretrained", help="Weights of a dense --teacher (file or builtin:NAME); required for a name.")
@click.option("--kd-alpha", type=float, default=0.5, show_default=True, help="Weight of the soft KD term.")
@click.option("--kd-temperature", type=float, default=1.0, show_default=True)
@_model_options
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="timm's random-resized-crop + flip for training.")
@click.option("--train-limit", type=int, help="Train on a fixed subset of this many images.")
@click.option("--val-limit", type=int, help="Validate on a fixed subset of this many images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm over processes (torchrun on CUDA).")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda (torchrun: one GPU per rank).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def finetune_command(model, data, output, resume, workers, device, no_progress, **options):
    """Finetune MODEL (exported pruned directory or dense model name) on --data.

    Writes OUTPUT/metrics.csv (one row per epoch), steps.csv, checkpoint.json + checkpoints/ (every epoch),
    best/ and final/. Several GPUs: torchrun --nproc_per_node N -m mdp_cli finetune ...
    """
    from mdp_cli.train.engine import FinetuneConfig, finetune

    names = {f.name for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in options.items() if k in names})
    if cfg.epochs < 1:
        raise MdpError("--epochs must be at least 1")
    row = finetune(model, data, output, cfg, resume=resume, device=device, num_workers=workers,
                   progress=not no_progress, log=lambda line: click.echo(line, err=True))
    if row and os.environ.get("RANK", "0") == "0":
        click.echo(json.dumps({k: row[k] for k in ("epoch", "val_top1", "val_top5", "val_loss")}))
