"""AdamW with decay on matrices only, and learning-rate schedules as resumable LambdaLR objects."""

from __future__ import annotations

import inspect
import math

import torch

from slmtrain.config import OptimConfig, ScheduleConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW where only tensors of rank >= 2 (matrices, embeddings) are decayed.

    Norm gains and biases are not decayed: pulling them to zero fights the normalisation they implement.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused_ok = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
    fused = fused_ok if cfg.fused == "auto" else (cfg.fused == "on" and fused_ok)
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **extra)


class Schedule:
    """lr multiplier as a pure function of the step; plain attributes so LambdaLR can checkpoint it."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int) -> None:
        self.kind = cfg.kind
        self.warmup = cfg.warmup_steps
        self.floor = cfg.min_lr_ratio
        self.decay_fraction = cfg.decay_fraction
        self.total = max(1, total_steps)

    def __call__(self, step: int) -> float:
        # (step + 1) so the very first update already moves the weights.
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            decay_start = max(self.warmup, int(self.total * (1.0 - self.decay_fraction)))
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, self.total - 1 - decay_start))
            return 1.0 - (1.0 - self.floor) * progress
        # The last step (total - 1) runs exactly at the floor.
        progress = min(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        if self.kind == "linear":
            return 1.0 - (1.0 - self.floor) * progress
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(cfg, total_steps))
