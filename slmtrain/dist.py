"""torchrun environment, process group, DDP / FSDP2 wrapping, and cross-rank agreement."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slmtrain.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, info: DistInfo | None = None) -> torch.device:
    """auto: CUDA, else MPS, else CPU; an explicit device that is not there is a UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for but no CUDA device is visible: use 'auto' or 'cpu' "
                            "(run.device in a recipe, --device on the command line)")
        return torch.device("cuda", info.local_rank if info else 0)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but MPS is not available: use 'auto' or 'cpu' "
                        "(run.device in a recipe, --device on the command line)")
    return torch.device(name)


def from_env() -> DistInfo:
    """Read what torchrun exported; a plain `python -m slmtrain` is one process."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(info: DistInfo, device: torch.device, backend: str = "auto", timeout_seconds: float = 300.0) -> None:
    """Join the process group; a collective that waits `timeout_seconds` for a peer fails instead of hanging."""
    if not info.enabled or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, strategy: str) -> torch.nn.Module:
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "h", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` of all ranks, on every rank: how ranks agree on when to stop and save."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_mean(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a copy; `t` itself when there is one process)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()
