"""torchrun environment, process group, DDP / FSDP2 wrapping, and cross-rank agreement."""

from __future__ import annotations

import datetime
import os
import secrets
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slmtrain.errors import SlmError, UserError

# Where rank 0 of each attempt names the namespace its process group uses in torchrun's shared store.
_ATTEMPT_KEY = "slmtrain/attempt"


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
    timeout = datetime.timedelta(seconds=timeout_seconds)
    store = attempt_store(info, timeout)
    if store is None:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size,
                                timeout=timeout)


def attempt_store(info: DistInfo, timeout: datetime.timedelta) -> dist.Store | None:
    """This attempt's own namespace in torchrun's shared store; None where torchrun shares no store.

    torchrun's agent hosts one store for the whole job (TORCHELASTIC_USE_AGENT_STORE=True) and torch's
    env:// rendezvous puts no per-attempt prefix on it, so after `--max-restarts` restarts the workers,
    gloo reads the dead workers' addresses from it and fails in connectFullMesh (NCCL picks up a stale
    unique id the same way: pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT is no safe prefix: each
    node's agent counts only its own failures, so after one node's failure the nodes disagree. Instead
    rank 0 picks a fresh random name, and every other rank takes a name only once the live rank 0 has
    answered a token made up on the spot, which a name left behind by a dead attempt never does.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None  # plain env://, or TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: a new store every attempt
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    if info.rank == 0:
        name = secrets.token_hex(8)
        store.set(_ATTEMPT_KEY, name)
        for rank in range(1, info.world_size):
            try:
                token = store.get(f"{_ATTEMPT_KEY}/{name}/join/{rank}").decode()
            except dist.DistStoreError:
                raise SlmError(_no_peer(f"rank {rank} did not join", timeout)) from None
            store.set(f"{_ATTEMPT_KEY}/{name}/welcome/{rank}/{token}", "")
    else:
        name = _join_attempt(store, info.rank, timeout)
    return dist.PrefixStore(f"{_ATTEMPT_KEY}/{name}", store)


def _join_attempt(store: dist.Store, rank: int, timeout: datetime.timedelta) -> str:
    """The name rank 0 of this attempt chose; a name a dead attempt left is read, never answered, and dropped."""
    deadline = time.monotonic() + timeout.total_seconds()
    name = token = ""
    while time.monotonic() < deadline:
        try:
            current = store.get(_ATTEMPT_KEY).decode()  # waits until some rank 0 has written one
        except dist.DistStoreError:
            break
        if current != name:
            name, token = current, secrets.token_hex(8)
            store.set(f"{_ATTEMPT_KEY}/{name}/join/{rank}", token)
        if store.check([f"{_ATTEMPT_KEY}/{name}/welcome/{rank}/{token}"]):
            return name
        time.sleep(0.02)
    raise SlmError(_no_peer(f"rank {rank} got no answer from rank 0", timeout))


def _no_peer(what: str, timeout: datetime.timedelta) -> str:
    return (f"the process group could not form: {what} within parallel.timeout_seconds = "
            f"{timeout.total_seconds():.0f}s. Check that every rank of the job started (torchrun's log names "
            f"the one that died) and can reach MASTER_ADDR:MASTER_PORT.")


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
