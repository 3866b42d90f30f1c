"""What a time-budgeted run does at its planning steps: time a save, evaluate, fix or refine the step count,
record it (console, metrics, run.json, the next checkpoint), and say so when the budget cuts the run short.

The decisions themselves (when, and how many steps) are `slmtrain.budget`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from slmtrain import dist, runinfo
from slmtrain.budget import BudgetPlanner, fit_steps
from slmtrain.log import fmt_duration
from slmtrain.optim import set_total_steps

# `rm` below is the run's RunManager; typed loosely so this module does not import the one that imports it.


def plan_budget(rm: Any, planner: BudgetPlanner, clock: Callable[[], float]) -> None:
    """Fix the budget's step count after the probe (a save timed the step before), then refine it."""
    st = rm.state
    step = st["step"]
    if st["planned_steps"] is None:
        action = planner.probe_step(step, st["train_seconds"])
        if action == "save":
            t0 = time.monotonic()
            rm.settle()
            rm.saver.save(reason="budget_probe")
            planner.probe_save_s = time.monotonic() - t0
        elif action == "fit":
            _fit_budget(rm, planner, clock)
        return
    new = planner.refit(step, clock(), rm.total_steps, st["budget_reserve_seconds"], rm.step_cap())
    if new is not None:
        new = -dist.max_over_ranks(-new, rm.device)  # every rank takes the same number of steps
    if new is not None and new != rm.total_steps:
        rm.metrics.write("event", event="budget_refit", step=step, planned_steps=new,
                           previous_steps=rm.total_steps, elapsed_seconds=round(clock(), 3))
        st["planned_steps"] = rm.total_steps = new
        set_total_steps(rm.scheduler, new)
        if rm.info.is_main:
            runinfo.record(rm.run_dir, planned_steps=new)
        planner.fitted(step, clock())

def _fit_budget(rm: Any, planner: BudgetPlanner, clock: Callable[[], float]) -> None:
    """Fix the step count that fills the time budget and save at once, so the count is durable.

    Timed: this attempt's steps after its first few, one save the step before and one evaluation now.
    Too short a probe estimates the save from its size.
    """
    cfg, st = rm.cfg, rm.state
    step = st["step"]
    step_s = planner.probe_step_seconds(step, st["train_seconds"])
    t0 = time.monotonic()
    rm.evaluate_now()
    eval_s = time.monotonic() - t0
    save_s = planner.probe_save_s if planner.probe_save_s is not None else rm.saver.estimate_seconds()
    c = cfg.checkpoint
    fitted = fit_steps(planner.budget_s, clock(), step, step_s, eval_s=eval_s, eval_every=cfg.eval.every_steps,
                       save_s=save_s, save_every=c.every_steps, save_every_s=c.every_minutes * 60)
    # Every rank must take the same number of steps: the smallest fit wins.
    fitted = -dist.max_over_ranks(-min(fitted, rm.step_cap()), rm.device)
    st["planned_steps"] = rm.total_steps = max(fitted, step)
    st["budget_reserve_seconds"] = eval_s + save_s
    set_total_steps(rm.scheduler, rm.total_steps)
    if rm.info.is_main:
        runinfo.record(rm.run_dir, planned_steps=rm.total_steps)
    refine = " (refined while the LR is flat)" if cfg.schedule.kind == "wsd" else ""
    rm.console.info(f"time budget {fmt_duration(planner.budget_s)}: {rm.total_steps} steps{refine} "
                      f"({step_s * 1000:.0f} ms a step, evaluation {eval_s:.2f}s, save ~{save_s:.2f}s); the "
                      f"schedule reaches its floor at the last step. The same run without a budget: --set "
                      f"train.max_minutes=0 --set train.max_steps=N (N: the final count, in run.json)")
    if rm.total_steps <= cfg.schedule.warmup_steps:
        rm.console.info(f"warning: the budget fits {rm.total_steps} steps, no more than schedule.warmup_steps "
                          f"= {cfg.schedule.warmup_steps}: the LR never leaves its warmup. Lower "
                          f"schedule.warmup_steps (or the model's size) so the schedule can reach its floor.")
    st["train_seconds"] = clock()
    t0 = time.monotonic()
    rm.settle()
    rm.saver.save(reason="budget")
    saved_s = time.monotonic() - t0
    st["budget_reserve_seconds"] = eval_s + max(save_s, saved_s)
    planner.fitted(step, clock())
    rm.metrics.write("event", event="budget_plan", step=step, planned_steps=rm.total_steps,
                       budget_seconds=planner.budget_s, step_seconds=round(step_s, 5),
                       eval_seconds=round(eval_s, 4), save_seconds_estimate=round(save_s, 4),
                       save_seconds=round(saved_s, 4), elapsed_seconds=round(clock(), 3))

def budget_cut(rm: Any) -> None:
    st = rm.state
    planned = st["planned_steps"]
    rm.metrics.write("event", event="budget_cut", step=st["step"], planned_steps=planned,
                       elapsed_seconds=round(st["train_seconds"], 3))
    why = "the machine ran slower than when the count was fitted" if planned else "train.fit_budget = false"
    rm.console.info(f"time budget spent at step {st['step']} of {planned or rm.total_steps} ({why}): stopping "
                      f"before the schedule reached its floor")
