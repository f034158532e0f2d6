"""Evaluation and finetuning of dense or pruned models (library API; the CLI is a thin layer on top).

``evaluate`` measures top-1/top-5, mean loss and throughput over a split. ``finetune`` trains with SGD or
AdamW, a warm-up + cosine/linear schedule stepped per iteration, label smoothing, optional gradient
clipping, EMA (timm's ``ModelEmaV3``), AMP on CUDA and knowledge distillation from a dense teacher; under
torchrun it wraps the model in ``DistributedDataParallel``. Every epoch ends with an atomic checkpoint
(see ``checkpoint.py``) and a row in ``metrics.csv``; ``resume=True`` continues from the last one.

Exact resume: each epoch starts by seeding torch, Python and NumPy from (seed, epoch, rank) and the
sampler from (seed, epoch), so an epoch's batches, augmentations and dropout masks do not depend on what
ran before it; together with the restored weights, optimiser, scheduler and scaler, a run resumed after
a crash reproduces the uninterrupted run bit for bit on the same device, thread count and library
versions (deterministic kernels; on CUDA this needs deterministic algorithms, which we do not force).
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdp_cli.artifacts import atomic_path, atomic_write_text, canonical_hash, provenance, read_json, write_json
from mdp_cli.data import data_config, make_loader, parse_spec
from mdp_cli.errors import MdpError
from mdp_cli.train import checkpoint as ckpt
from mdp_cli.train.dist import Dist, all_sum, barrier, setup, teardown

EVAL_SCHEMA = "mdp.eval"
RUN_SCHEMA = "mdp.finetune"


# ----------------------------------------------------------------------------------------- models

@dataclass
class LoadedModel:
    module: nn.Module
    source: str
    arch: dict[str, Any] | None = None  # the exported spec (minus envelope) when loaded from a directory
    weights: str = ""  # where the weights came from (file + sha256, builtin, random init)
    input_from: str = ""  # where the input transform came from (an export's arch.json, or the model's defaults)
    notes: list[str] = field(default_factory=list)  # what was changed on loading (e.g. a replaced head)

    def describe(self, img_size: int | None = None) -> str:
        """One line for the log: model, weights, input transform (``img_size`` overriding), classes."""
        cfg = data_config(self.module, img_size)
        size = "x".join(str(v) for v in cfg["input_size"][1:])
        mean = ", ".join(f"{v:.3f}" for v in cfg["mean"])
        std = ", ".join(f"{v:.3f}" for v in cfg["std"])
        line = (f"{self.source}: weights {self.weights}; input {size} px, mean ({mean}), std ({std})"
                + (f" [{self.input_from}]" if self.input_from else ""))
        return line + "".join(f"; {note}" for note in self.notes)


def load_model(spec: str, pretrained: str | None = None, num_classes: int | None = None,
               img_size: int | None = None, replace_head: bool = False, seed: int | None = None) -> LoadedModel:
    """An exported pruned model directory (``arch.json`` + ``model.safetensors``) or a dense model name.

    An export keeps its resolution, normalisation and class count (from ``arch.json``); ``num_classes`` that
    differs is an error unless ``replace_head`` (finetuning), which gives it a new head. A dense model takes
    ``pretrained`` (file or builtin:NAME; its class count unless ``num_classes``); ``seed`` is only reported.
    """
    path = Path(spec)
    if path.is_dir():
        return _load_exported(path, pretrained, num_classes, img_size, replace_head)
    from mdp_cli.models import create_model

    overrides: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        module = create_model(spec, pretrained, replace_head=replace_head, **overrides,
                              **({"img_size": img_size} if img_size else {}))
    except TypeError:  # families without an img_size argument (CNNs) take any resolution as it is
        module = create_model(spec, pretrained, replace_head=replace_head, **overrides)
    weights = module.mdp_weights if pretrained is not None else (
        "random init" + (f" (seed {seed})" if seed is not None else ""))
    input_from = "defaults of the model"
    trained = _trained_data_config(pretrained, spec)
    if trained is not None:
        module.mdp_data_config = trained
        input_from = "model.json beside the weights (the transform they were trained with)"
    if img_size is not None:
        input_from = f"size from --img-size, the rest from {input_from}"
    return LoadedModel(module, spec, weights=weights, input_from=input_from)


def _trained_data_config(pretrained: str | None, model_name: str) -> dict[str, Any] | None:
    """The transform recorded by ``mdp finetune`` in ``model.json`` next to dense weights it saved, if any."""
    if pretrained is None or str(pretrained).startswith("builtin:"):
        return None
    sidecar = Path(pretrained).with_name("model.json")
    if not sidecar.is_file():
        return None
    record = read_json(sidecar, "mdp.dense_weights", 1)
    config = record.get("data_config")
    if record.get("model") != model_name or not isinstance(config, dict):
        return None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def _load_exported(path: Path, pretrained: str | None, num_classes: int | None, img_size: int | None,
                   replace_head: bool) -> LoadedModel:
    from mdp_cli.export.spec import ARCH_SCHEMA, ARCH_VERSION, load_exported
    from mdp_cli.train.exported import export_data_config, export_num_classes, replace_export_head
    from mdp_cli.weights import describe_weights

    if not (path / "arch.json").is_file():
        raise MdpError(f"{path}: a directory but not an exported model (no arch.json); run 'mdp export'")
    if pretrained:
        raise MdpError(f"{path}: --pretrained applies to dense model names; an exported model has its weights")
    module = load_exported(path)
    arch = read_json(path / "arch.json", ARCH_SCHEMA, ARCH_VERSION)
    prov = arch.get("provenance") if isinstance(arch.get("provenance"), dict) else {}
    arch = {k: v for k, v in arch.items() if k not in ("schema", "version", "provenance")}
    config, input_from = export_data_config(arch, prov)
    if img_size is not None and int(img_size) != config["input_size"][1]:
        if arch.get("family") == "vit":
            raise MdpError(f"--img-size {img_size}: {path} is a ViT exported at {config['input_size'][1]} px "
                           f"(its position embedding fixes the size); drop --img-size")
        input_from = f"size from --img-size, {input_from.split(', ', 1)[1]}"
    module.mdp_data_config = config
    arch["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    loaded = LoadedModel(module, str(path), arch, weights=describe_weights(str(path / "model.safetensors")),
                         input_from=input_from)
    classes = export_num_classes(module, arch)
    if num_classes is not None and classes is not None and num_classes != classes:
        if not replace_head:
            raise MdpError(f"--num-classes {num_classes}: {path} has a {classes}-class head; drop --num-classes "
                           f"(or finetune, which replaces the head)")
        replace_export_head(module, arch, num_classes)
        loaded.notes.append(f"head replaced: {classes} -> {num_classes} classes (new head, random init)")
    elif classes is not None:
        loaded.notes.append(f"{classes} classes (arch.json)")
    return loaded


def _input_summary(config: dict[str, Any], source: str) -> dict[str, Any]:
    return {"size": list(config["input_size"][1:]), "mean": list(config["mean"]), "std": list(config["std"]),
            "from": source}


def _logits(output: Any) -> torch.Tensor:
    # DeiT distilled models in training mode return (class head, distillation head); average for metrics.
    if isinstance(output, (tuple, list)):
        return (output[0] + output[1]) / 2
    return output


def _check_classes(model: nn.Module, logits: torch.Tensor, classes: int, data: str) -> None:
    if logits.shape[-1] < classes:
        raise MdpError(
            f"the model has {logits.shape[-1]} outputs but --data {data} has {classes} classes; "
            f"pass --num-classes {classes} (finetune gives the model a new head of that size)"
        )


# ----------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _run_eval(model: nn.Module, loader, ctx: Dist, amp_dtype: torch.dtype | None, data: str,
              progress: bool = False) -> dict[str, float]:
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # images, loss sum, top1 hits, top5 hits
    seconds = 0.0
    checked = False
    batches = loader
    if progress and ctx.is_main:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for images, targets in batches:
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        start = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = _logits(model(images)).float()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds += time.perf_counter() - start
        if not checked:
            _check_classes(model, logits, len(loader.dataset.classes), data)
            checked = True
        loss = F.cross_entropy(logits, targets, reduction="sum")
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        totals += torch.tensor([len(targets), loss.item(), hits[:, 0].sum().item(), hits.any(dim=1).sum().item()],
                               dtype=torch.float64)
    totals = all_sum(ctx, totals)
    timing = all_sum(ctx, torch.tensor([seconds], dtype=torch.float64))
    images = max(totals[0].item(), 1.0)
    return {
        "images": int(totals[0].item()),
        "loss": totals[1].item() / images,
        "top1": 100.0 * totals[2].item() / images,
        "top5": 100.0 * totals[3].item() / images,
        # forward-only throughput (data loading excluded), all ranks together
        "images_per_s": totals[0].item() / max(timing[0].item() / ctx.world_size, 1e-9),
    }


def evaluate(model_spec: str, data: str, *, split: str = "val", pretrained: str | None = None,
             num_classes: int | None = None, img_size: int | None = None, batch_size: int = 128,
             limit: int | None = None, num_workers: int = 0, device: str | None = None, amp: str = "off",
             output: str | Path | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Top-1/top-5, loss and images/s of a model on one split; writes ``output`` (JSON) when given.

    ``log`` gets one line saying which weights, input size, mean/std and class count were used.
    """
    ctx = setup(device)
    try:
        loaded = load_model(model_spec, pretrained, num_classes, img_size)
        model = loaded.module.to(ctx.device)
        dcfg = data_config(model, img_size)
        loader = make_loader(data, split, config=dcfg, batch_size=batch_size, train=False,
                             limit=limit, num_workers=num_workers, rank=ctx.rank, world_size=ctx.world_size)
        if log is not None and ctx.is_main:  # after the data checks: an error stays the only line
            log(loaded.describe(img_size))
        metrics = _run_eval(model, loader, ctx, _amp_dtype(amp, ctx), str(data), progress)
        result = {
            "schema": EVAL_SCHEMA, "version": 1,
            # every option that shapes the numbers, so that `mdp report` can print the command that reproduces them
            "provenance": provenance(stage="eval", model=loaded.source, data=str(parse_spec(data)), split=split,
                                     device=str(ctx.device), batch_size=batch_size,
                                     threads=torch.get_num_threads(), world_size=ctx.world_size, limit=limit,
                                     pretrained=pretrained, num_classes=num_classes, img_size=img_size, amp=amp),
            "weights": loaded.weights, "input": _input_summary(dcfg, loaded.input_from),
            **metrics,
        }
        if output is not None and ctx.is_main:
            write_json(output, result)
        return result
    finally:
        teardown(ctx)


# ----------------------------------------------------------------------------------------- finetuning

@dataclass
class FinetuneConfig:
    """Everything that shapes the result of a run (hashed: --resume refuses a different config)."""

    epochs: int = 10
    batch_size: int = 128  # global, over all processes
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # absolute; else lr_per_1024 * batch_size / 1024
    lr_per_1024: float = 0.4
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-5
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    clip_grad: float | None = None
    ema_decay: float | None = None
    amp: str = "auto"  # auto (fp16 on CUDA) | off | fp16 | bf16
    kd: str = "none"  # none | soft | hard
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    teacher: str | None = None
    teacher_pretrained: str | None = None
    img_size: int | None = None
    augment: bool = True
    train_limit: int | None = None
    val_limit: int | None = None
    seed: int = 0
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA DDP only)
    num_classes: int | None = None
    pretrained: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else self.lr_per_1024 * self.batch_size / 1024


def _amp_dtype(amp: str, ctx: Dist) -> torch.dtype | None:
    if amp == "auto":
        return torch.float16 if ctx.device.type == "cuda" else None
    if amp == "off":
        return None
    if amp == "fp16":
        if ctx.device.type != "cuda":
            raise MdpError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    raise MdpError(f"--amp {amp!r}: use auto, off, fp16 or bf16")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise MdpError(f"--schedule {schedule!r}: use cosine, linear or constant")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on biases and normalisation parameters (1-D tensors), as usual for both recipes.
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr(), momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=False)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.base_lr(), foreach=False)
    raise MdpError(f"--optimizer {cfg.optimizer!r}: use sgd or adamw")


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    value = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


class DistillationLoss(nn.Module):
    """Label-smoothed CE, plus distillation from a frozen teacher.

    ``soft``: (1-a) CE + a T^2 KL(teacher/T || student/T). ``hard`` (DeiT distillation token): the class head
    learns the labels and the distillation head the teacher's argmax, 0.5 each.
    """

    def __init__(self, mode: str, teacher: nn.Module | None, alpha: float, temperature: float, smoothing: float):
        super().__init__()
        self.mode, self.teacher, self.alpha, self.t = mode, teacher, alpha, temperature
        self.ce = nn.CrossEntropyLoss(label_smoothing=smoothing)

    def forward(self, images: torch.Tensor, output: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.ce(_logits(output), targets)
        with torch.no_grad():
            teacher_logits = _logits(self.teacher(images)).float()
        if self.mode == "hard":
            if not isinstance(output, (tuple, list)):
                raise MdpError("--kd hard needs a model with a distillation token (DeiT *_distilled_*)")
            cls, dist_head = output
            return 0.5 * self.ce(cls, targets) + 0.5 * F.cross_entropy(dist_head, teacher_logits.argmax(-1))
        student = _logits(output).float()
        if teacher_logits.shape[-1] != student.shape[-1]:
            raise MdpError(f"--teacher has {teacher_logits.shape[-1]} classes, the model {student.shape[-1]}; "
                           f"distil from a teacher trained on the same classes")
        kl = F.kl_div(F.log_softmax(student / self.t, dim=-1), F.log_softmax(teacher_logits / self.t, dim=-1),
                      reduction="batchmean", log_target=True)
        return (1 - self.alpha) * self.ce(student, targets) + self.alpha * self.t**2 * kl


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _save_model(directory: Path, model: nn.Module, loaded: LoadedModel, cfg: FinetuneConfig, **fields: Any) -> None:
    """Save weights the way they were given: an exported directory stays one; a dense model gets safetensors."""
    if loaded.arch is not None:
        from mdp_cli.export.spec import save_exported

        save_exported(directory, model, loaded.arch, stage="finetune", source=loaded.source, **fields)
        return
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / "model.json", {
        "schema": "mdp.dense_weights", "version": 1,
        "provenance": provenance(stage="finetune", **fields),
        "model": loaded.source, "num_classes": cfg.num_classes, "img_size": cfg.img_size,
        # the transform it was trained with: eval/finetune of these weights use it unless told otherwise
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config(model, cfg.img_size).items()},
    })


def finetune(model_spec: str, data: str, output: str | Path, cfg: FinetuneConfig, *, resume: bool = False,
             device: str | None = None, num_workers: int = 0, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Finetune ``model_spec`` (exported directory or dense name) on ``data``; returns the last metrics row."""
    ctx = setup(device)
    try:
        return _finetune(ctx, model_spec, data, Path(output), cfg, resume, num_workers, progress, log)
    finally:
        teardown(ctx)


def _finetune(ctx: Dist, model_spec: str, data: str, out: Path, cfg: FinetuneConfig, resume: bool,
              num_workers: int, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    if cfg.batch_size % ctx.world_size:
        raise MdpError(f"--batch-size {cfg.batch_size} is global and must divide by the {ctx.world_size} processes")
    if cfg.kd != "none" and not cfg.teacher:
        raise MdpError(f"--kd {cfg.kd} needs --teacher (the dense model name or an exported directory)")
    if cfg.kd != "none" and not Path(cfg.teacher).is_dir() and not cfg.teacher_pretrained:
        raise MdpError(f"--teacher {cfg.teacher} has no weights (a randomly initialised teacher teaches nothing); "
                       f"pass --teacher-pretrained FILE or builtin:NAME, or a finetuned/exported directory")
    config = asdict(cfg) | {"model": model_spec, "data": str(parse_spec(data))}
    config_hash = canonical_hash(config)
    if resume:
        ckpt.require_checkpoint(out)  # a mistyped --output must not silently start a fresh run
    if not resume and ctx.is_main and (out / ckpt.POINTER).exists():
        raise MdpError(f"{out}: holds a run already; pass --resume to continue it or choose another --output")

    torch.manual_seed(cfg.seed)
    loaded = load_model(model_spec, cfg.pretrained, cfg.num_classes, cfg.img_size, replace_head=True, seed=cfg.seed)
    model = loaded.module.to(ctx.device)
    dcfg = data_config(model, cfg.img_size)
    if loaded.arch is not None:  # the finetuned export records the transform it was trained with
        loaded.arch["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dcfg.items()}
    per_rank = cfg.batch_size // ctx.world_size
    train_loader = make_loader(data, "train", config=dcfg, batch_size=per_rank, train=True, augment=cfg.augment,
                               limit=cfg.train_limit, num_workers=num_workers, seed=cfg.seed, rank=ctx.rank,
                               world_size=ctx.world_size)
    val_loader = make_loader(data, "val", config=dcfg, batch_size=per_rank, train=False, limit=cfg.val_limit,
                             num_workers=num_workers, rank=ctx.rank, world_size=ctx.world_size)
    classes = len(train_loader.dataset.classes)
    if ctx.is_main:  # after the data checks: an error stays the only line
        log(loaded.describe(cfg.img_size))

    teacher = None
    if cfg.kd != "none":
        # The teacher keeps its own class count (from its weights); it must match the student's.
        loaded_teacher = load_model(cfg.teacher, cfg.teacher_pretrained, None, cfg.img_size)
        if ctx.is_main:
            log(f"teacher {loaded_teacher.source}: weights {loaded_teacher.weights} (sees the student's inputs)")
        teacher = loaded_teacher.module.to(ctx.device)
        teacher.eval().requires_grad_(False)
    if cfg.kd == "hard":
        if not hasattr(model, "set_distilled_training"):
            raise MdpError("--kd hard needs a model with a distillation token (DeiT *_distilled_*)")
        model.set_distilled_training(True)

    ema = None
    if cfg.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, device=ctx.device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, cfg.schedule, cfg.min_lr_ratio))
    amp_dtype = _amp_dtype(cfg.amp, ctx)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    criterion = DistillationLoss(cfg.kd, teacher, cfg.kd_alpha, cfg.kd_temperature, cfg.label_smoothing)

    start_epoch, step = 0, 0
    best: dict[str, Any] = {"metric": "val_top1", "value": None, "epoch": None}
    rows: list[dict[str, Any]] = []
    if resume:
        state, tensors = ckpt.read_checkpoint(out)
        if state["config"] != config:
            changed = sorted(k for k in config if state["config"].get(k) != config[k])
            raise MdpError(f"--resume: {out} was started with different settings ({', '.join(changed)})")
        ckpt.restore(state, tensors, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     ema=ema.module if ema is not None else None)
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
        rows = _read_csv(out / "metrics.csv")[:start_epoch]
        if ctx.is_main:
            log(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")

    train_model: nn.Module = model
    if cfg.sync_bn and ctx.enabled:
        if ctx.device.type != "cuda":
            raise MdpError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on CPU)")
        # Converted after the checkpoint was restored: SyncBatchNorm keeps the same parameter and buffer names.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects: optimiser and EMA stay valid
        train_model = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.is_main:
        write_json(out / "run.json", {"schema": RUN_SCHEMA, "version": 1, "config_hash": config_hash,
                                      "provenance": provenance(stage="finetune", world_size=ctx.world_size,
                                                               device=str(ctx.device)),
                                      "config": config, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                                        for k, v in dcfg.items()}})

    parts = _Parts(model, train_model, optimizer, scheduler, scaler, ema, criterion, amp_dtype)
    row: dict[str, Any] = rows[-1] if rows else {}
    for epoch in range(start_epoch, cfg.epochs):
        losses, hits, train_seconds, step = _train_epoch(parts, train_loader, cfg, ctx, epoch, step, progress,
                                                         check=lambda out: _check_classes(model, out, classes, str(data)))
        val = _run_eval(model, val_loader, ctx, amp_dtype, str(data))
        ema_val = _run_eval(ema.module, val_loader, ctx, amp_dtype, str(data)) if ema is not None else None
        if cfg.kd == "hard":
            model.set_distilled_training(True)
        score = ema_val["top1"] if ema_val is not None else val["top1"]
        improved = best["value"] is None or score > best["value"]
        if improved:
            best = {"metric": "ema_val_top1" if ema is not None else "val_top1", "value": score, "epoch": epoch + 1}
        row = {
            "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": losses.mean().item(), "train_top1": 100 * hits[0].item() / max(hits[1].item(), 1),
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "ema_val_top1": ema_val["top1"] if ema_val else "",
            "epoch_seconds": train_seconds, "train_images_per_s": hits[1].item() / max(train_seconds, 1e-9),
        }
        if ctx.is_main:
            rows.append(row)
            # Everything else first, the checkpoint last: it is the commit point of the epoch.
            if improved:
                _save_model(out / "best", ema.module if ema is not None else model, loaded, cfg,
                            epoch=epoch + 1, val_top1=score)
            _append_steps(out / "steps.csv", epoch, step - steps_per_epoch, losses)
            _write_csv(out / "metrics.csv", rows)  # rows past the checkpoint's epoch are dropped on resume
            ckpt.save_checkpoint(out, epoch=epoch + 1, step=step, model=model, optimizer=optimizer,
                                 scheduler=scheduler, scaler=scaler, ema=ema.module if ema is not None else None,
                                 best=best, config=config)
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                f"top1 {row['train_top1']:.2f} | val loss {val['loss']:.4f} top1 {val['top1']:.2f} "
                f"top5 {val['top5']:.2f}" + (f" | ema top1 {ema_val['top1']:.2f}" if ema_val else "")
                + f" | {train_seconds:.1f}s, {row['train_images_per_s']:.0f} img/s")
        barrier(ctx)
    if ctx.is_main:
        _save_model(out / "final", model, loaded, cfg, epoch=cfg.epochs)
        if ema is not None:
            _save_model(out / "final_ema", ema.module, loaded, cfg, epoch=cfg.epochs)
    barrier(ctx)
    return row


def finetune_module(model: nn.Module, data: str, cfg: FinetuneConfig, config: dict[str, Any], *,
                    device: str = "cpu", log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Finetune an in-memory module with ``cfg``'s recipe (the loop of ``finetune``: same loaders, optimiser,
    schedule, loss and per-epoch seeding), without checkpoints, in one process; ``config`` is the input
    transform (``data_config``). Lets two pruning methods whose models have no export directory (a
    benchmark's baseline) be finetuned exactly alike. Distillation is not offered here. Returns one row of
    metrics per epoch; the module is trained in place."""
    if cfg.kd != "none":
        raise MdpError("finetune_module: distillation needs a teacher; use finetune()")
    ctx = Dist(device=torch.device(device))
    torch.manual_seed(cfg.seed)
    model = model.to(ctx.device)
    train_loader = make_loader(data, "train", config=config, batch_size=cfg.batch_size, train=True,
                               augment=cfg.augment, limit=cfg.train_limit, seed=cfg.seed)
    val_loader = make_loader(data, "val", config=config, batch_size=cfg.batch_size, train=False, limit=cfg.val_limit)
    classes = len(train_loader.dataset.classes)
    optimizer = make_optimizer(model, cfg)
    total_steps = len(train_loader) * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * len(train_loader)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, cfg.schedule, cfg.min_lr_ratio))
    amp_dtype = _amp_dtype(cfg.amp, ctx)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    criterion = DistillationLoss("none", None, 0.0, 1.0, cfg.label_smoothing)
    parts = _Parts(model, model, optimizer, scheduler, scaler, None, criterion, amp_dtype)
    rows, step = [], 0
    for epoch in range(cfg.epochs):
        losses, hits, seconds, step = _train_epoch(parts, train_loader, cfg, ctx, epoch, step, False,
                                                   check=lambda out: _check_classes(model, out, classes, str(data)))
        val = _run_eval(model, val_loader, ctx, amp_dtype, str(data))
        rows.append({"epoch": epoch + 1, "train_loss": losses.mean().item(),
                     "train_top1": 100 * hits[0].item() / max(hits[1].item(), 1), "val_loss": val["loss"],
                     "val_top1": val["top1"], "epoch_seconds": seconds})
        if log is not None:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rows[-1]['train_loss']:.4f} | val top1 "
                f"{val['top1']:.2f} | {seconds:.1f}s")
    return rows


def evaluate_module(model: nn.Module, data: str, config: dict[str, Any], *, split: str = "val",
                    batch_size: int = 128, limit: int | None = None, device: str = "cpu") -> dict[str, float]:
    """Top-1/top-5 and loss of an in-memory module on one split (the metrics of ``evaluate``)."""
    ctx = Dist(device=torch.device(device))
    loader = make_loader(data, split, config=config, batch_size=batch_size, train=False, limit=limit)
    return _run_eval(model.to(ctx.device), loader, ctx, None, str(data))


@dataclass
class _Parts:
    model: nn.Module  # the bare module (checkpoints, EMA, evaluation)
    train_model: nn.Module  # the same, wrapped in DDP when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: Any
    criterion: DistillationLoss
    amp_dtype: torch.dtype | None


def _train_epoch(p: _Parts, loader, cfg: FinetuneConfig, ctx: Dist, epoch: int, step: int, progress: bool,
                 check: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """One epoch; returns per-step losses and (hits, images), both reduced over ranks, seconds, next step."""
    _seed_epoch(cfg.seed, epoch, ctx.rank)
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(cfg.seed * 1009 + epoch)
    p.train_model.train()
    losses = torch.zeros(len(loader), dtype=torch.float64)
    hits = torch.zeros(2, dtype=torch.float64)
    started = time.perf_counter()
    batches = bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        batches = bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    for i, (images, targets) in enumerate(batches if batches is not None else loader):
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=p.amp_dtype, enabled=p.amp_dtype is not None):
            output = p.train_model(images)
            if i == 0:  # before the loss: too few outputs for the labels is a one-line error, not an IndexError
                check(_logits(output))
            loss = p.criterion(images, output, targets)
        if not torch.isfinite(loss):
            raise MdpError(f"loss is {loss.item()} at epoch {epoch + 1} step {i + 1}; lower --lr or use --clip-grad")
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.scale(loss).backward()
        if cfg.clip_grad is not None:
            p.scaler.unscale_(p.optimizer)
            nn.utils.clip_grad_norm_(p.model.parameters(), cfg.clip_grad)
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.scheduler.step()
        step += 1
        if p.ema is not None:
            p.ema.update(p.model, step=step)
        losses[i] = loss.item()
        hits += torch.tensor([(_logits(output).argmax(-1) == targets).sum().item(), len(targets)], dtype=torch.float64)
        if bar is not None:
            bar.set_postfix(loss=f"{losses[: i + 1].mean().item():.4f}",
                            acc=f"{100 * hits[0].item() / hits[1].item():.1f}",
                            img_s=f"{(i + 1) * cfg.batch_size / (time.perf_counter() - started):.0f}", refresh=False)
    seconds = time.perf_counter() - started
    return all_sum(ctx, losses) / ctx.world_size, all_sum(ctx, hits), seconds, step


def _append_steps(path: Path, epoch: int, first_step: int, losses: torch.Tensor) -> None:
    """Per-step training loss (mean over all ranks' batches), the trajectory compared across world sizes."""
    rows = [r for r in _read_csv(path) if int(r["epoch"]) <= epoch]
    rows += [{"epoch": epoch + 1, "step": first_step + i + 1, "loss": repr(v)} for i, v in enumerate(losses.tolist())]
    _write_csv(path, rows)
