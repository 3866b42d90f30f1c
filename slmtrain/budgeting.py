"""What a time-budgeted run does at its planning steps: time a save, evaluate, fix or refine the step count,
record it (console, metrics, run.json, the next checkpoint), and say so when the budget cuts the run short.

The decisions themselves (when, and how many steps) are `slmtrain.budget`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import slmtrain.dist as dist
import slmtrain.runinfo as runinfo
from slmtrain.budget import BudgetPlanner, fit_steps
from slmtrain.log import fmt_duration
from slmtrain.saving import Saver
from slmtrain.trainstate import RunContext, TrainState


@dataclass
class BudgetRun:
    """What budget planning acts on: the state, the attempt, its saver, and the loop's evaluate and settle."""

    state: TrainState
    ctx: RunContext
    saver: Saver
    evaluate: Callable[[], None]  # one evaluation now (logged as usual)
    settle: Callable[[], None]  # read the pending device flags and losses before a save
    clock: Callable[[], float]  # the budget's elapsed seconds


def _set_planned(r: BudgetRun, n: int) -> None:
    r.state.counters["planned_steps"] = n
    r.state.set_total_steps(n)
    if r.ctx.info.is_main:
        runinfo.record(r.ctx.run_dir, planned_steps=n)


def plan_budget(r: BudgetRun, planner: BudgetPlanner) -> None:
    """Fix the budget's step count after the probe (a save timed the step before), then refine it."""
    st, clock = r.state.counters, r.clock
    step = st["step"]
    if st["planned_steps"] is None:
        action = planner.probe_step(step, st["train_seconds"])
        if action == "save":
            t0 = time.monotonic()
            r.settle()
            r.saver.save(reason="budget_probe")
            planner.probe_save_s = time.monotonic() - t0
        elif action == "fit":
            _fit_budget(r, planner)
        return
    total = r.state.total_steps
    new = planner.refit(step, clock(), total, st["budget_reserve_seconds"], r.state.step_cap)
    if new is not None:
        new = -dist.max_over_ranks(-new, r.ctx.device)  # every rank takes the same number of steps
    if new is not None and new != total:
        r.ctx.metrics.write("event", event="budget_refit", step=step, planned_steps=new, previous_steps=total,
                            elapsed_seconds=round(clock(), 3))
        _set_planned(r, new)
        planner.fitted(step, clock())


def _fit_budget(r: BudgetRun, planner: BudgetPlanner) -> None:
    """Fix the step count that fills the time budget and save at once, so the count is durable.

    Timed: this attempt's steps after its first few, one save the step before and one evaluation now.
    Too short a probe estimates the save from its size.
    """
    cfg, st, clock = r.ctx.cfg, r.state.counters, r.clock
    step = st["step"]
    step_s = planner.probe_step_seconds(step, st["train_seconds"])
    t0 = time.monotonic()
    r.evaluate()
    eval_s = time.monotonic() - t0
    save_s = planner.probe_save_s if planner.probe_save_s is not None else r.saver.estimate_seconds()
    c = cfg.checkpoint
    fitted = fit_steps(planner.budget_s, clock(), step, step_s, eval_s=eval_s, eval_every=cfg.eval.every_steps,
                       save_s=save_s, save_every=c.every_steps, save_every_s=c.every_minutes * 60)
    # Every rank must take the same number of steps: the smallest fit wins.
    fitted = -dist.max_over_ranks(-min(fitted, r.state.step_cap), r.ctx.device)
    total = max(fitted, step)
    _set_planned(r, total)
    st["budget_reserve_seconds"] = eval_s + save_s
    refine = " (refined while the LR is flat)" if cfg.schedule.kind == "wsd" else ""
    r.ctx.say(f"time budget {fmt_duration(planner.budget_s)}: {total} steps{refine} "
              f"({step_s * 1000:.0f} ms a step, evaluation {eval_s:.2f}s, save ~{save_s:.2f}s); the "
              f"schedule reaches its floor at the last step. The same run without a budget: --set "
              f"train.max_minutes=0 --set train.max_steps=N (N: the final count, in run.json)")
    if total <= cfg.schedule.warmup_steps:
        r.ctx.say(f"warning: the budget fits {total} steps, no more than schedule.warmup_steps "
                  f"= {cfg.schedule.warmup_steps}: the LR never leaves its warmup. Lower "
                  f"schedule.warmup_steps (or the model's size) so the schedule can reach its floor.")
    st["train_seconds"] = clock()
    t0 = time.monotonic()
    r.settle()
    r.saver.save(reason="budget")
    saved_s = time.monotonic() - t0
    st["budget_reserve_seconds"] = eval_s + max(save_s, saved_s)
    planner.fitted(step, clock())
    r.ctx.metrics.write("event", event="budget_plan", step=step, planned_steps=total,
                        budget_seconds=planner.budget_s, step_seconds=round(step_s, 5),
                        eval_seconds=round(eval_s, 4), save_seconds_estimate=round(save_s, 4),
                        save_seconds=round(saved_s, 4), elapsed_seconds=round(clock(), 3))


def budget_cut(state: TrainState, ctx: RunContext) -> None:
    st = state.counters
    planned = st["planned_steps"]
    ctx.metrics.write("event", event="budget_cut", step=st["step"], planned_steps=planned,
                      elapsed_seconds=round(st["train_seconds"], 3))
    why = "the machine ran slower than when the count was fitted" if planned else "train.fit_budget = false"
    ctx.say(f"time budget spent at step {st['step']} of {planned or state.total_steps} ({why}): stopping "
            f"before the schedule reached its floor")
