"""Distributed data parallel set-up for ``torchrun`` (NCCL on GPU, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def current_dist_info() -> DistInfo:
    """The process group this process is already part of (single process when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (rank order)."""
    if not info.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group. All ranks meet first: a rank that tears gloo down while another is still
    finishing its last collective can make that rank abort ("terminate called without an active exception")."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
