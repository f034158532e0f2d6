"""Training checkpoints with no pickles: tensors in safetensors, everything else in a JSON envelope.

Layout inside a run directory::

    checkpoints/epoch-0003.safetensors   model.*, ema.*, optim.<param>.<key>, rng.torch, rng.cuda.<i>
    checkpoint.json                      schema mdp.checkpoint: epoch, step, best metric, optimiser
                                         param groups, scheduler, grad scaler, python/numpy RNG states,
                                         the run config and the tensor file's name and sha256

Both files are written atomically, the tensors first; ``checkpoint.json`` is the commit point, so a
crash (even SIGKILL) at any moment leaves either the previous or the new checkpoint, never a mix. Older
tensor files are deleted after the pointer moved on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdp_cli.artifacts import atomic_path, file_hash, provenance, read_json, write_json
from mdp_cli.errors import MdpError

CHECKPOINT_SCHEMA = "mdp.checkpoint"
CHECKPOINT_VERSION = 1
POINTER = "checkpoint.json"


# ----------------------------------------------------------------------------------------- RNG states

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------- optimiser

def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    for index, values in plain["plain"].items():
        per_param.setdefault(int(index), {}).update(values)
    return {"state": per_param, "param_groups": plain["param_groups"]}


# ----------------------------------------------------------------------------------------- save / load

def save_checkpoint(run_dir: str | Path, *, epoch: int, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, ema: torch.nn.Module | None,
                    best: dict[str, Any], config: dict[str, Any], keep_last: int = 1) -> Path:
    """Write the state after ``epoch`` completed epochs (rank 0 only); returns the tensor file's path."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_plain = _split_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    rng_tensors, rng_plain = rng_state()
    tensors.update(rng_tensors)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    name = f"checkpoints/epoch-{epoch:04d}.safetensors"
    with atomic_path(run_dir / name) as tmp:
        save_file(tensors, str(tmp))
    sched_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    write_json(run_dir / POINTER, {
        "schema": CHECKPOINT_SCHEMA, "version": CHECKPOINT_VERSION,
        "provenance": provenance(stage="finetune"),
        "epoch": epoch, "step": step, "best": best, "config": config,
        "tensors": name, "tensors_sha256": file_hash(run_dir / name),
        "optimizer": optim_plain, "scheduler": sched_state, "scaler": scaler.state_dict(), "rng": rng_plain,
        "has_ema": ema is not None,
    })
    kept = sorted((run_dir / "checkpoints").glob("epoch-*.safetensors"))
    for old in kept[:-keep_last] if keep_last > 0 else []:
        if old.name != Path(name).name:
            old.unlink(missing_ok=True)
    return run_dir / name


def require_checkpoint(run_dir: str | Path) -> None:
    """For ``--resume``: refuse (one line) a run directory that does not exist or holds no checkpoint,
    instead of silently starting a new run in a mistyped directory."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MdpError(f"--resume: {run_dir} does not exist (mistyped --output?); give the directory of the run "
                       "to continue, or drop --resume to start a new run")
    if not run_dir.is_dir():
        raise MdpError(f"--resume: {run_dir} is a file, not a run directory; give the run's --output directory")
    if not (run_dir / POINTER).is_file():
        raise MdpError(f"--resume: {run_dir} holds no checkpoint ({POINTER}): no epoch of a run there finished "
                       "(or the path is mistyped); drop --resume to start the run from the beginning")


def read_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from mdp_cli.models import read_state_dict

    run_dir = Path(run_dir)
    require_checkpoint(run_dir)
    state = read_json(run_dir / POINTER, CHECKPOINT_SCHEMA, CHECKPOINT_VERSION)
    tensors, digest = state.get("tensors"), state.get("tensors_sha256")
    if not isinstance(tensors, str) or not isinstance(digest, str):
        raise MdpError(f"--resume: {run_dir / POINTER} lacks 'tensors' and 'tensors_sha256'; the checkpoint is "
                       "damaged: start the run again without --resume")
    path = run_dir / tensors
    if not path.is_file():
        raise MdpError(f"--resume: {path} named by {run_dir / POINTER} is missing")
    if file_hash(path) != digest:
        raise MdpError(f"--resume: {path} does not match the sha256 recorded in {run_dir / POINTER}")
    return state, read_state_dict(path)


def restore(state: dict[str, Any], tensors: dict[str, torch.Tensor], *, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, ema: torch.nn.Module | None) -> None:
    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(prefixed("model."), strict=True)
    if ema is not None:
        if not state.get("has_ema"):
            raise MdpError("--resume: the checkpoint has no EMA weights but this run asks for --ema")
        ema.load_state_dict(prefixed("ema."), strict=True)
    optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(tensors, state["rng"])
