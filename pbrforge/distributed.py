"""Devices and processes: which device a command runs on, and the torchrun process group (DDP).

Training and shard writing both run under ``torchrun``; they share these helpers so that rank, world size
and device are decided one way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pbrforge.errors import UnavailableError
from pbrforge.options import DEVICES


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; asking for an absent device is one sentence."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UnavailableError("--device mps was asked for, but this machine has no Apple GPU (MPS)")
    if name not in DEVICES:
        raise UnavailableError(f"unknown device {name!r}; use {', '.join(DEVICES)}")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a no-op when run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
