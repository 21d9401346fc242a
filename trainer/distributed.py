"""Process-group helpers: rank/world size read once from torchrun's environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank, world size and local rank as torchrun sets them (single process when absent)."""
    env = os.environ if env is None else env
    return DistInfo(
        rank=int(env.get("RANK", 0)),
        world_size=int(env.get("WORLD_SIZE", 1)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
    )


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA is available, else CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", info.local_rank)


def setup(info: DistInfo, device: torch.device) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) and share the CPU cores fairly."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif info.local_world_size > 1:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // info.local_world_size))
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}


def all_gather_lists(values: list[Any]) -> list[Any]:
    """Concatenate a python list from every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [v for part in gathered for v in (part or [])]


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
