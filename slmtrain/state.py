"""Adapters between live training objects and what a checkpoint stores.

Model and optimizer go through torch.distributed.checkpoint's state-dict API, which unwraps DDP,
FSDP2 and torch.compile (no `_orig_mod.` prefixes) and keys optimizer state by parameter name, so a
checkpoint reshards across world sizes. RNG and the data cursor are per-rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)


def model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"model": ..., "optim": ...} ready for DCP; shares storage with the live objects."""
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def load_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           state: dict[str, Any]) -> None:
    """Apply a state filled by DCP; strict, so a key mismatch raises instead of training on garbage."""
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=True))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
