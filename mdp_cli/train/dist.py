"""torch.distributed set-up for runs started by ``torchrun`` (one process per device), and reductions.

A run is distributed when ``WORLD_SIZE`` > 1 in the environment (torchrun sets it). The backend is NCCL
on CUDA and gloo on CPU. Only rank 0 writes files; metrics are summed or averaged over ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mdp_cli.errors import MdpError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> Dist:
    """Join the process group when started by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MdpError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MdpError(f"--device {device}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (float64 on the wire so that sums of counts and losses stay exact enough)."""
    if not ctx.enabled:
        return tensor
    buf = tensor.detach().to(ctx.device, torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
