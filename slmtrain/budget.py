"""When a time-budgeted run fixes its step count, and (warmup-stable-decay) refines it while the LR is flat.

A run given `train.max_minutes` measures itself during warmup, where the LR does not depend on the run's
length, and fixes the count then (`fit_steps`). With `schedule.kind = "wsd"` the LR also does not depend on
the length during the stable phase, so the count is refitted from the measured pace every few steps until
shortly before the decay would start: a machine that turns slower or faster in that stretch still ends on
its budget, and a rerun with the final count as `train.max_steps` takes exactly the same steps.
This module holds only that logic; it does no I/O and keeps no state a checkpoint would need.
"""

from __future__ import annotations

import math

from slmtrain.config import ScheduleConfig, TrainConfig

UNTIMED_STEPS = 4  # the first steps of an attempt carry one-off costs (allocations, compilation)


def decay_start(schedule: ScheduleConfig, total: int) -> int:
    """First step whose wsd LR depends on `total` (the schedule's own rule)."""
    return max(schedule.warmup_steps, int(total * (1.0 - schedule.decay_fraction)))


def fit_steps(budget_s: float, elapsed_s: float, done: int, step_s: float, *, eval_s: float, eval_every: int,
              save_s: float, save_every: int, save_every_s: float = 0.0) -> int:
    """Total optimizer steps that fill a time budget, final evaluation and final save included.

    Args:
        budget_s: the budget in seconds; elapsed_s of it are spent, on `done` steps.
        step_s: measured seconds per step; eval_s / save_s: seconds per evaluation / save, which happen every
            eval_every / save_every steps (0: never) and every save_every_s seconds (0: never).

    Returns:
        `done` plus as many steps as fit in what is left (never fewer than `done`).
    """
    left = budget_s - elapsed_s - eval_s - save_s
    if save_every_s > 0:
        left -= save_s * math.floor(max(0.0, budget_s - elapsed_s) / save_every_s)
    per_step = step_s + (eval_s / eval_every if eval_every else 0.0) + (save_s / save_every if save_every else 0.0)
    return done + max(0, math.floor(left / max(per_step, 1e-9)))


class BudgetPlanner:
    """Tells the loop of one attempt when to time a save, when to fix the count and when to refine it."""

    def __init__(self, train: TrainConfig, schedule: ScheduleConfig, first_step: int, seconds: float) -> None:
        self.schedule = schedule
        self.budget_s = train.max_minutes * 60
        self.fit_at = min(first_step + train.budget_probe_steps, schedule.warmup_steps - 1)
        self.time_from = min(first_step + UNTIMED_STEPS, self.fit_at - 2)
        self.save_at = self.fit_at - 1 if self.fit_at - 1 > first_step + 1 else None
        self.probe = (first_step, seconds)
        self.probe_save_s: float | None = None
        self.pace_from = (first_step, seconds)  # refits measure the pace from here

    def probe_step(self, step: int, seconds: float) -> str | None:
        """Before the count is fixed: "save" (time one), "fit" (fix it now) or None."""
        if step == self.time_from:
            self.probe = (step, seconds)
        if step == self.save_at:
            return "save"
        return "fit" if step >= self.fit_at else None

    def probe_step_seconds(self, step: int, seconds: float) -> float:
        """Seconds per step over the timed probe steps (the timed save left out)."""
        first, then = self.probe
        if step <= first:
            return seconds / max(1, step)
        return (seconds - then - (self.probe_save_s or 0.0)) / (step - first)

    def fitted(self, step: int, seconds: float) -> None:
        """The count was fixed (or refitted) at `step`: later refits measure the pace from here."""
        self.pace_from = (step, seconds)

    def refit(self, step: int, seconds: float, total: int, reserve_s: float, cap: int) -> int | None:
        """A new total from the pace since the last fit, or None: not a wsd schedule, not a refit step, or the
        stable phase (under the current or the new total) ends too soon for the LR not to depend on it."""
        if self.schedule.kind != "wsd" or step < self.schedule.warmup_steps:
            return None
        if step % max(10, total // 20) or step + 2 >= decay_start(self.schedule, total):
            return None
        first, then = self.pace_from
        if step - first < 10:
            return None
        pace = (seconds - then) / (step - first)  # evaluations and saves of the stretch included
        new = step + max(0, math.floor((self.budget_s - seconds - reserve_s) / max(pace, 1e-9)))
        # The decay must still start after this step under the new total, or the LR of the steps already
        # taken would have depended on the length.
        floor = math.ceil((step + 2) / max(1e-9, 1.0 - self.schedule.decay_fraction))
        if cap < floor:
            return None
        return min(max(new, floor), cap)
