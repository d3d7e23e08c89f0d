"""Data-parallel setup: who am I (torchrun or SLURM), which device, and the few collectives the trainer needs.

The environment is read the way open_clip's `training/distributed.py` reads it: torchrun's ``LOCAL_RANK``,
``RANK``, ``WORLD_SIZE`` first, else SLURM's ``SLURM_LOCALID``, ``SLURM_PROCID``, ``SLURM_NTASKS`` (with
``MASTER_ADDR``/``MASTER_PORT`` set by the job script). One process, no variables: world size 1 and no process
group at all, so a laptop run never touches torch.distributed. `MASKCLIP_FORCE_DDP=1` under torchrun joins the
process group and wraps the model in DDP even at world size 1 (benchmarks/gpu_check.sh: NCCL on a single GPU).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError


def world_info_from_env() -> tuple[int, int, int]:
    """(local_rank, rank, world_size) from torchrun's or SLURM's variables; (0, 0, 1) when neither is set."""
    for local, glob, size in (("LOCAL_RANK", "RANK", "WORLD_SIZE"), ("SLURM_LOCALID", "SLURM_PROCID", "SLURM_NTASKS")):
        if size in os.environ:
            return int(os.environ.get(local, 0)), int(os.environ.get(glob, 0)), int(os.environ[size])
    return 0, 0, 1


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    forced: bool = False  # MASKCLIP_FORCE_DDP=1: process group and DDP at world size 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.forced

    @property
    def is_primary(self) -> bool:
        """Rank 0: the only one that writes logs, metrics and checkpoints."""
        return self.rank == 0


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` as this process's torch device; plain `cuda` is the local rank's GPU.

    The one device resolver: training, evaluation and `bench` all call it, so a name means the same everywhere.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"unknown device '{device}' (choose auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but torch sees no CUDA device on this machine")
    return torch.device(device if ":" in device else f"cuda:{local_rank}")


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group if launched by torchrun/SLURM (NCCL on GPUs, gloo on CPU) and pick the device."""
    local_rank, rank, world_size = world_info_from_env()
    dev = pick_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    forced = os.environ.get("MASKCLIP_FORCE_DDP") == "1" and "WORLD_SIZE" in os.environ
    if (world_size > 1 or forced) and not dist.is_initialized():
        if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world_size))
            os.environ.setdefault("LOCAL_RANK", str(local_rank))
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(f"distributed run (world size {world_size}) without {var}; launch with torchrun "
                                  f"or export {var} in the SLURM script")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, local_rank, dev, forced=forced)


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (in place, returned); a no-op on one process."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Maximum over ranks (in place, returned); a no-op on one process."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier(env: DistEnv) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if env.distributed:
        dist.barrier()
