"""The live training state: one object that the loop, the saver, the restorer and a rollback share.

It is a dict of Stateful pieces (each has `state_dict` / `load_state_dict`), and each piece has one place
in a checkpoint: "app" (model and optimizer through DCP, sharded, reshardable), "rank" (per-process:
RNG and data cursor) or "meta" (small JSON: trainer counters with the spike detector, LR schedule, grad
scaler). `collect` gathers them for a save and `apply` puts a checkpoint's back, so whatever is added to
the state is saved and restored by adding a piece here, and nothing else reads the loop's attributes.

`RunContext` is what stays fixed during an attempt (recipe, ranks, device, directories, tokenizer, data
fingerprints, the validation batches, where events go).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from slmtrain.config import Config
from slmtrain.dist import DistInfo
from slmtrain.health import SpikeDetector
from slmtrain.optim import set_total_steps
from slmtrain.state import load_model_optim_state, model_optim_state, rng_state, set_rng_state


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Events(Protocol):
    def write(self, kind: str, **fields: Any) -> None: ...


def fresh_counters() -> dict[str, Any]:
    """The trainer's counters at step 0; saved as they are (checkpoint meta "trainer")."""
    return {"step": 0, "tokens": 0, "skipped": 0, "consecutive_skipped": 0, "best_val_loss": None,
            "train_seconds": 0.0, "planned_steps": None, "budget_reserve_seconds": 0.0, "rollbacks": 0,
            "data_skip": 0, "pending_rollback": None}


class _ModelOptim:
    """Model and optimizer as one piece: DCP's state-dict API keys optimizer state by parameter name."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return model_optim_state(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_optim_state(self.model, self.optimizer, state)


class _Rng:
    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class _Trainer:
    """The counters, with the spike detector's window folded in under "health"."""

    def __init__(self, counters: dict[str, Any], detector: SpikeDetector) -> None:
        self.counters, self.detector = counters, detector

    def state_dict(self) -> dict[str, Any]:
        return dict(self.counters, health=self.detector.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters.update({k: v for k, v in state.items() if k != "health"})
        self.detector.load_state_dict(state.get("health", {}))


# Where each piece lives in a checkpoint.
PLACES = {"model_optim": "app", "rng": "rank", "loader": "rank", "trainer": "meta", "scheduler": "meta",
          "scaler": "meta"}


@dataclass
class TrainState:
    model: torch.nn.Module  # the bare model (not the DDP / compile wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    detector: SpikeDetector
    make_loader: Callable[[int], Any]  # start step -> a stateful loader positioned there
    total_steps: int  # the run's length: max_steps, or the count a time budget fixed
    step_cap: int  # the length before a budget fits it
    counters: dict[str, Any] = field(default_factory=fresh_counters)
    last_eval: tuple[int, float] | None = None  # (step, validation loss) of the newest evaluation

    def __post_init__(self) -> None:
        self.loader = self.make_loader(0)

    def reposition_loader(self, start_step: int) -> None:
        """A loader whose first batch is global step `start_step`'s (windows are a function of the step)."""
        self.loader = self.make_loader(start_step)

    def set_total_steps(self, n: int) -> None:
        self.total_steps = n
        set_total_steps(self.scheduler, n)

    def pieces(self) -> dict[str, Stateful]:
        out: dict[str, Stateful] = {"model_optim": _ModelOptim(self.model, self.optimizer), "rng": _Rng(),
                                    "loader": self.loader, "trainer": _Trainer(self.counters, self.detector),
                                    "scheduler": self.scheduler}
        if self.scaler is not None:
            out["scaler"] = self.scaler
        return out

    def collect(self) -> dict[str, dict[str, Any]]:
        """{"app": {...}, "rank": {...}, "meta": {...}}: every piece's state at its place in a checkpoint.

        "app" shares storage with the live tensors (DCP writes it; a background save snapshots it first).
        """
        out: dict[str, dict[str, Any]] = {"app": {}, "rank": {}, "meta": {}}
        for name, piece in self.pieces().items():
            if name == "model_optim":
                out["app"] = piece.state_dict()
            else:
                out[PLACES[name]][name] = piece.state_dict()
        return out

    def app_template(self) -> dict[str, Any]:
        """The live model/optimizer state DCP loads a checkpoint into, in place."""
        return model_optim_state(self.model, self.optimizer)

    def apply(self, app: dict[str, Any], rank: dict[str, Any] | None, meta: dict[str, Any],
              loader_step: int | None = None) -> None:
        """Put a checkpoint's state back. `rank` is None, or `loader_step` set, when the checkpoint was
        written by another number of processes: the cursor is then rebuilt from the step alone."""
        pieces = self.pieces()
        pieces["model_optim"].load_state_dict(app)
        if rank is not None:
            pieces["rng"].load_state_dict(rank["rng"])
        if loader_step is not None:
            self.reposition_loader(loader_step)
        elif rank is not None:
            self.loader.load_state_dict(rank["loader"])
        self.scheduler.load_state_dict(meta["scheduler"])
        # The schedule's length follows the current recipe (max_steps may be raised on resume); a count
        # a time budget fixed is applied by the run once the counters below are in.
        self.set_total_steps(self.total_steps)
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        pieces["trainer"].load_state_dict(meta["trainer"])


@dataclass
class RunContext:
    """What the saver, restorer, rollback and budget need to know about the attempt, besides its state."""

    cfg: Config
    info: DistInfo
    device: torch.device
    run_dir: Path
    tokenizer: Any  # slmtrain.data.tokenizer.Tokenizer
    data_meta: dict[str, Any]  # the prepared data's meta (fingerprints, tokens per byte)
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    metrics: Events
    say: Callable[[str], None]  # a line on rank 0's console

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"
