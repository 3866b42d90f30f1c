"""What goes into a checkpoint, when it is written, and how a run is restored from one.

`checkpoint.py` is the mechanism (atomic directories, manifests, discovery); this is the policy:
every N steps or minutes, on preemption and at the end; synchronous or in the background; on a
failed write, stop or keep training and retry at the next interval.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import slmtrain.config as config_mod
import slmtrain.diskspace as diskspace
import slmtrain.dist as dist
import slmtrain.fsio as fsio
import slmtrain.runinfo as runinfo
from slmtrain.asyncsave import AsyncSaver, snapshot
from slmtrain.checkpoint import load_app_state, prune, read_meta, read_rank_state, save_checkpoint
from slmtrain.errors import CheckpointError, SlmError, UserError
from slmtrain.model import GPT
from slmtrain.reference import REFERENCE_POSITIONS, compute_reference
from slmtrain.trainstate import RunContext, TrainState

# Conservative write throughput used to estimate a save before the first one has been timed.
_ASSUMED_WRITE_BYTES_PER_S = 100e6


class SaveFailed(SlmError):
    """A checkpoint could not be written; the previous one is intact."""


def checkpoint_config(cfg: config_mod.Config, tokenizer_fingerprint: str) -> dict[str, Any]:
    """config.json: everything needed to rebuild the model without the run directory."""
    return {"schema": config_mod.SCHEMA_VERSION, "recipe": cfg.to_dict(), "dtype": "float32",
            "tokenizer_fingerprint": tokenizer_fingerprint, "versions": runinfo.versions()}


class Saver:
    """Save policy for one attempt: writes `state` as a checkpoint under `ctx.ckpt_root`."""

    def __init__(self, state: TrainState, ctx: RunContext) -> None:
        self.state, self.ctx = state, ctx
        self.cfg = ctx.cfg.checkpoint
        self.background = AsyncSaver() if self.cfg.async_save else None
        # With several processes, a background save's collectives (the token broadcast, DCP's plan and result
        # exchange) run on a gloo group of their own: on the training group they would pair up with the
        # training thread's all-reduces. Every rank builds its Saver at the same point, as new_group requires.
        several = self.background is not None and ctx.info.enabled
        self.group = torch.distributed.new_group(backend="gloo") if several else None
        self.pending_step: int | None = None
        self.last_time = time.monotonic()
        self.last_path: Path | None = None
        self.last_seconds: float | None = None
        self.last_bytes: int | None = None

    # ------------------------------------------------------------------------------------ policy
    def periodic_due(self) -> bool:
        """Whether a periodic save is due at this step (every N steps or minutes; the final save is separate)."""
        step = self.state.counters["step"]
        if step >= self.state.total_steps:
            return False  # the final save follows
        by_steps = bool(self.cfg.every_steps) and step % self.cfg.every_steps == 0
        by_time = bool(self.cfg.every_minutes) and time.monotonic() - self.last_time >= self.cfg.every_minutes * 60
        # Ranks must agree: a wall-clock trigger can fire on one rank and not another.
        return by_steps or bool(self.cfg.every_minutes and dist.max_over_ranks(int(by_time), self.ctx.device))

    def expect_like(self, checkpoint: Path) -> None:
        """Expect the next save to take what `checkpoint` (the one just resumed from) takes: on a nearly full
        disk, the first save of a resumed attempt is then judged by a real size, not by an estimate."""
        self.last_bytes = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())

    def expected_bytes(self) -> int:
        """What the next checkpoint will take on disk: the last one's size, or weights + optimizer state."""
        if self.last_bytes is not None:
            return self.last_bytes
        weights = sum(p.numel() * p.element_size() for p in self.state.model.parameters())
        state = sum(t.numel() * t.element_size() for s in self.state.optimizer.state.values() for t in s.values()
                    if isinstance(t, torch.Tensor))
        return weights + max(state, 2 * weights) + 2**20

    def estimate_seconds(self) -> float:
        """Seconds one save costs the training loop: the last one's, or from the state's size until timed."""
        if self.last_seconds is not None:
            return self.last_seconds
        nbytes = sum(p.numel() * p.element_size() for p in self.state.model.parameters()) * 3  # weights + Adam m, v
        return nbytes / _ASSUMED_WRITE_BYTES_PER_S

    def warn_if_over_grace(self, step_seconds: float) -> None:
        """Warn when one step plus one save may not fit in the preemption grace period."""
        save_s = self.estimate_seconds()
        grace = self.cfg.grace_seconds
        if step_seconds + save_s > grace:
            msg = (f"warning: one step ({step_seconds:.1f}s) plus one save (~{save_s:.1f}s) exceeds "
                   f"checkpoint.grace_seconds = {grace:.0f}s: a preemption may kill the run before its save is durable")
            self.ctx.say(msg)
            self.ctx.metrics.write("event", event="grace_warning", step=self.state.counters["step"],
                                  estimate_seconds=round(step_seconds + save_s, 3), grace_seconds=grace)

    def wait(self) -> None:
        """Return once no background save is in flight (its failure handled by policy)."""
        self._background("wait")

    def poll(self) -> None:
        """Surface a background save's failure in the training loop."""
        self._background("poll")

    def _background(self, call: str) -> None:
        if self.background is None:
            return
        try:
            getattr(self.background, call)()
        except Exception as e:  # noqa: BLE001 - any write error is handled by policy
            self._failed(e, final=False, step=self.pending_step)

    def save(self, reason: str, wait: bool = False) -> None:
        """Write a checkpoint at the current step. `wait`: return only once it is durable."""
        ctx = self.ctx
        started = time.monotonic()
        if self.background is not None:
            try:
                self.background.wait()  # at most one save in flight
            except Exception as e:  # noqa: BLE001 - the earlier save's failure; this one still goes ahead
                self._failed(e, final=False, step=self.pending_step)
        needed = self.expected_bytes()
        problem = diskspace.space_problem(ctx.ckpt_root, needed)
        # Every rank writes its part, so all skip when any cannot (a lone rank in DCP's collectives would hang).
        if dist.max_over_ranks(int(problem is not None), ctx.device):
            problem = problem or "another rank's filesystem has no room for its part of the checkpoint"
            # Said before anything is written: no partial directory, nothing to clean up.
            self._failed(OSError(errno.ENOSPC, problem), final=wait, cause=problem + " (checked before writing)")
            self.last_time = time.monotonic()
            return
        try:
            payload = self._package(reason)
            if self.background is not None and not wait:
                # The stall: copying the state. The reference outputs are computed in the background, from a
                # model rebuilt on that copy, so they describe exactly the saved weights; only rank 0 writes
                # them. A sharded model cannot be rebuilt from its shard: its forward (collectives on the
                # training group) runs here, before the copy.
                sharded = ctx.info.enabled and ctx.cfg.parallel.strategy == "fsdp"
                if sharded:
                    payload = self._with_reference(payload, self.state.model)
                payload = {k: snapshot(v) if k in ("app", "rank") else v for k, v in payload.items()}
                stall = time.monotonic() - started
                self.pending_step = payload["step"]
                later = sharded or not ctx.info.is_main
                self.background.submit(
                    lambda: self._write(payload if later else self._with_reference(payload, None), started, self.group))
                ctx.metrics.write("event", event="save_submitted", step=payload["step"], reason=reason,
                                 stall_seconds=round(stall, 4))
                return
            self._write(self._with_reference(payload, self.state.model), started)
        except Exception as e:  # noqa: BLE001
            self._failed(e, final=wait)
            return
        finally:
            self.last_time = time.monotonic()

    def _failed(self, error: Exception, final: bool, step: int | None = None, cause: str | None = None) -> None:
        step = self.state.counters["step"] if step is None else step
        cause = cause or diskspace.describe(error, self.ctx.ckpt_root, self.expected_bytes())
        msg = (f"checkpoint save at step {step} failed: {cause}. The previous checkpoint "
               f"({self.last_path.name if self.last_path else 'none'}) is intact.")
        self.ctx.metrics.write("event", event="save_failed", step=step, cause=cause,
                              error=f"{type(error).__name__}: {error}")
        if final or self.cfg.on_error == "stop":
            raise SaveFailed(msg) from error
        self.ctx.say(msg + " Training continues (checkpoint.on_error = 'continue'); retrying at the next "
                             "interval.")

    # ---------------------------------------------------------------------------------- contents
    def _package(self, reason: str) -> dict[str, Any]:
        ctx, st = self.ctx, self.state
        counters = st.counters
        tok = ctx.tokenizer
        x, y = ctx.val_batches[0]
        n = min(REFERENCE_POSITIONS, x.shape[1])
        reference_inputs = ([(p, tok.encode(p)) for p in self.cfg.reference_prompts],
                            torch.cat([x[:1, :n], y[:1, n - 1:n]], dim=1))
        val_loss = st.last_eval[1] if st.last_eval and st.last_eval[0] == counters["step"] else None
        pieces = st.collect()
        meta = {
            "reason": reason, "tokens": counters["tokens"], "val_loss": val_loss,
            "best_val_loss": counters["best_val_loss"], "scaler": None, **pieces["meta"],
            "tokenizer_fingerprint": tok.fingerprint, "params": st.model.num_params(),
            "data_fingerprints": ctx.data_meta["source_fingerprints"],
        }
        files = {
            "config.json": fsio.dumps_json(checkpoint_config(ctx.cfg, tok.fingerprint)),
            "tokenizer.json": tok.to_json().encode("utf-8"),
        }
        return {"step": counters["step"], "app": pieces["app"], "rank": pieces["rank"], "files": files,
                "meta": meta, "reference_inputs": reference_inputs}

    def _with_reference(self, p: dict[str, Any], model: GPT | None) -> dict[str, Any]:
        """Add the reference generations and log-probs of `model`, or of one rebuilt from the payload's copy."""
        if model is None:
            # Built on the meta device: a random init here would draw from the global RNG the training
            # thread is using at the same moment, and resume would no longer be exact.
            with torch.device("meta"):
                model = GPT(self.ctx.cfg.model)
            model.load_state_dict(p["app"]["model"], strict=True, assign=True)
        prompts, batch = p["reference_inputs"]
        ref_meta, ref_tensors = compute_reference(model, prompts, self.cfg.reference_tokens, batch)
        p["meta"]["reference"] = ref_meta
        p["files"]["reference.safetensors"] = safetensors.torch.save(ref_tensors)
        return p

    def _write(self, p: dict[str, Any], started: float, group: Any = None) -> None:
        """Commit `p`; `group`: the process group of a background save's collectives (None: the global one)."""
        ctx = self.ctx
        info = ctx.info
        path = save_checkpoint(ctx.ckpt_root, p["step"], p["app"], p["rank"], p["files"], p["meta"],
                               rank=info.rank, world_size=info.world_size, log=ctx.say, group=group)
        # Not while preempted: pruning re-hashes the kept checkpoints, time the grace period may not have.
        if info.is_main and p["meta"]["reason"] != "preempt":
            prune(ctx.ckpt_root, self.cfg.keep_last, self.cfg.keep_best, protect={path})
        self.last_path = path
        self.last_seconds = time.monotonic() - started
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        self.last_bytes = size
        ctx.metrics.write("event", event="save", step=p["step"], reason=p["meta"]["reason"], path=path.name,
                         seconds=round(self.last_seconds, 4), bytes=size)

    def close(self) -> None:
        if self.background is not None:
            self.background.close()


def _check_compatible(ctx: RunContext, saved: dict[str, Any], path: Path, saved_world: int) -> None:
    try:
        old = config_mod.from_dict(saved["recipe"], origin=f"{path}/config.json")
    except (KeyError, TypeError, UserError) as e:
        raise CheckpointError(f"{path}/config.json does not hold a valid recipe: {e}") from None
    unsafe = [k for k in config_mod.diff(old, ctx.cfg) if k not in config_mod.RESUME_SAFE_KEYS]
    # The split of the global batch into processes x accumulation x micro-batch may change with the world
    # size: the global sample indices of every step, hence the data, stay the same.
    split = {"train.batch_size", "train.grad_accum"}
    new, was = ctx.cfg.train, old.train
    if set(unsafe) <= split and \
            new.batch_size * new.grad_accum * ctx.info.world_size == was.batch_size * was.grad_accum * saved_world:
        unsafe = []
    if unsafe:
        changes = ", ".join(f"{k} ({_get(old, k)!r} -> {_get(ctx.cfg, k)!r})" for k in unsafe)
        raise UserError(f"cannot resume {ctx.run_dir} with a changed recipe: {changes}. These keys change the "
                        f"numbers a run computes; only scheduling, logging, eval and checkpoint keys may change on "
                        f"resume. Undo the change, or start a new run with `slmtrain run`.")


def _get(cfg: config_mod.Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(cfg, section), key)


def restore(state: TrainState, ctx: RunContext, path: Path) -> int:
    """Load everything a checkpoint holds into the freshly built `state`; returns its step."""
    meta = read_meta(path)
    _check_compatible(ctx, fsio.read_json(path / "config.json"), path, int(meta.get("world_size", 1)))
    if meta.get("tokenizer_fingerprint") != ctx.tokenizer.fingerprint:
        raise UserError(f"cannot resume from {path}: the tokenizer built for this run differs from the one the "
                        f"checkpoint was trained with (the training data or tokenizer files changed?). Restore "
                        f"them, or start a new run with `slmtrain run`.")
    fingerprints = ctx.data_meta["source_fingerprints"]
    if meta.get("data_fingerprints", fingerprints) != fingerprints:
        raise UserError(f"cannot resume from {path}: the training or validation data changed since the checkpoint "
                        f"was written (source fingerprints differ), so the run would not continue as it began. "
                        f"Restore the data files, or start a new run with `slmtrain run`.")
    app = state.app_template()
    load_app_state(path, app)
    info = ctx.info
    same_world = info.world_size == meta.get("world_size")
    rank = read_rank_state(path, info.rank if same_world else 0)
    # Another world size with the same global batch: windows are a pure function of the global sample index,
    # so the cursor is the step alone.
    loader_step = None if same_world else int(meta["step"]) + int(meta["trainer"].get("data_skip", 0))
    state.apply(app, rank, meta, loader_step=loader_step)
    return int(meta["step"])
