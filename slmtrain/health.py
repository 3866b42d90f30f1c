"""Training health: loss-spike detection and the rollback decision. Pure logic, no torch, no I/O.

A step's loss is *high* when it exceeds mean + `health.spike_sigma` standard deviations of the last
`health.window` normal losses and also `health.spike_ratio` times their mean (so a flat, noiseless stretch
does not make a tiny wobble a spike). `health.patience` high losses in a row are a spike; high losses do
not enter the window, so the baseline stays the healthy one. The detector's state is plain data and goes
into every checkpoint, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from slmtrain.config import HealthConfig


@dataclass
class Verdict:
    spike: bool  # `patience` high losses in a row ended at this step
    first_bad: int  # first step of the streak (meaningful when spike)


class SpikeDetector:
    def __init__(self, cfg: HealthConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.losses: list[float] = []
        self.streak = 0
        self.streak_start = 0
        if state:
            self.load_state_dict(state)

    def update(self, step: int, loss: float) -> Verdict:
        """Feed the loss of `step` (steps in order)."""
        c = self.cfg
        if not math.isfinite(loss):
            return Verdict(False, 0)  # non-finite steps have their own counter
        high = False
        if len(self.losses) >= c.window:
            mean = sum(self.losses) / len(self.losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / len(self.losses))
            high = loss > mean + c.spike_sigma * std and loss > c.spike_ratio * mean
        if not high:
            self.streak = 0
            self.losses = (self.losses + [loss])[-c.window:]
            return Verdict(False, 0)
        if self.streak == 0:
            self.streak_start = step
        self.streak += 1
        return Verdict(self.streak >= c.patience, self.streak_start)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "streak": self.streak, "streak_start": self.streak_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = [float(x) for x in state.get("losses", [])]
        self.streak = int(state.get("streak", 0))
        self.streak_start = int(state.get("streak_start", 0))

    def forget_streak(self) -> None:
        self.streak = 0
