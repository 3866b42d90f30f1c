"""Rolling a run back after a loss spike or a run of non-finite steps, in the same process.

The run reloads the newest sound checkpoint saved on the `checkpoint.every_steps` grid before the trouble
began (such a checkpoint exists whether or not the run was ever preempted, so a resumed run rolls back
to the same one), skips the data windows the bad stretch consumed (the loader's cursor moves past them;
`data_skip` keeps the offset), cools the LR by `health.lr_scale` for `health.lr_scale_steps` steps,
disarms an injected fault, and sets newer checkpoints aside (renamed, never resumed from). Every decision
lands in the trainer state, the schedule or the loader cursor, all checkpointed: resume stays exact.
"""

from __future__ import annotations

import time

import slmtrain.dist as dist
import slmtrain.fsio as fsio
from slmtrain.checkpoint import CheckpointInfo, list_checkpoints
from slmtrain.errors import SlmError
from slmtrain.manifest import LATEST_FILE
from slmtrain.saving import Saver, restore
from slmtrain.trainstate import RunContext, TrainState


class RollbackFailed(SlmError):
    """The run is unhealthy and cannot roll back (no checkpoint before the trouble, or no retries left)."""


def rollback_target(ctx: RunContext, first_bad: int) -> CheckpointInfo | None:
    """The newest sound on-grid checkpoint whose weights predate the first bad step's update, or None."""
    every = ctx.cfg.checkpoint.every_steps
    # The loss of step k comes from the weights after k - 1 updates: those may be the bad ones.
    good = [c for c in list_checkpoints(ctx.ckpt_root) if c.committed and not c.problems and c.step < first_bad - 1
            and (c.step % every == 0 if every else True) and c.step > 0]
    return good[-1] if good else None


def rollback(state: TrainState, ctx: RunContext, saver: Saver) -> None:
    """Act on the pending rollback in `state`: reload, skip the bad data, cool the LR; or raise RollbackFailed."""
    st, h = state.counters, ctx.cfg.health
    first_bad, why = st["pending_rollback"]
    now = st["step"]
    advice = ("lower optim.lr (or raise schedule.warmup_steps), tighten optim.grad_clip, or check the data, then "
              "resume from the last good checkpoint")
    if st["rollbacks"] >= h.max_rollbacks:
        raise RollbackFailed(f"{why} at step {now}, after {st['rollbacks']} rollbacks already (health.max_rollbacks "
                             f"= {h.max_rollbacks}): {advice}")
    target = rollback_target(ctx, first_bad)
    if target is None:
        raise RollbackFailed(f"{why} at step {now}, and no sound checkpoint on the checkpoint.every_steps grid before "
                             f"step {first_bad - 1} to roll back to: {advice}")
    started = time.monotonic()
    saver.wait()
    keep = {"rollbacks": st["rollbacks"] + 1, "data_skip": st["data_skip"] + now - target.step,
            "planned_steps": st["planned_steps"], "budget_reserve_seconds": st["budget_reserve_seconds"],
            "train_seconds": st["train_seconds"]}
    restore(state, ctx, target.path)
    st.update(keep, pending_rollback=None, consecutive_skipped=0)
    state.detector.forget_streak()
    state.reposition_loader(st["step"] + st["data_skip"])
    sched = state.scheduler
    for fn in sched.lr_lambdas:
        fn.scale, fn.scale_until = h.lr_scale, st["step"] + h.lr_scale_steps
        fn.fault_until = 0  # an injected fault fires once per run
    for group, base, fn in zip(state.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)
    set_aside = _set_aside_after(ctx, target.step, st["rollbacks"])
    seconds = time.monotonic() - started
    ctx.metrics.write("event", event="rollback", step=target.step, from_step=now, first_bad_step=first_bad,
                      reason=why, rollbacks=st["rollbacks"], skipped_data_steps=now - target.step,
                      lr_scale=h.lr_scale, lr_scale_until=st["step"] + h.lr_scale_steps, set_aside=set_aside,
                      seconds=round(seconds, 3))
    ctx.say(f"step {now}: {why}. Rolled back to {target.path.name} in {seconds:.2f}s (rollback "
            f"{st['rollbacks']} of at most {h.max_rollbacks}), skipping the {now - target.step} steps of data "
            f"since and running at {h.lr_scale:g}x the LR for {h.lr_scale_steps} steps")


def _set_aside_after(ctx: RunContext, step: int, n: int) -> list[str]:
    """Rename checkpoints newer than `step` out of discovery; `latest` names the rollback target."""
    names = []
    root = ctx.ckpt_root
    if ctx.info.is_main:
        target = None
        for c in list_checkpoints(root):
            if c.step > step:
                aside = c.path.with_name(f"{c.path.name}.rolledback-{n}")
                c.path.rename(aside)
                names.append(c.path.name)
            elif c.step == step:
                target = c.path.name
        if target:
            fsio.atomic_write_text(root / LATEST_FILE, target + "\n")
        fsio.fsync_dir(root)
    dist.barrier()
    return names
