"""RunManager: the run directory, building components from the frozen config, the loop, save policy.

Mechanism lives elsewhere (checkpoint.py writes, train.py steps); this module decides when and what.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch

import slmtrain.config as config_mod
import slmtrain.dist as dist
import slmtrain.fsio as fsio
import slmtrain.runinfo as runinfo
from slmtrain.checkpoint import cleanup_tmp, find_resume, list_checkpoints
from slmtrain.config import Config, RunConfig
from slmtrain.cpumatmul import onednn_enabled, onednn_wins, set_onednn
from slmtrain.data.prepare import PrepareInterrupted, prepare_data
from slmtrain.data.stream import build_train_loader, eval_batches
from slmtrain.errors import CheckpointError, ConfigError, RunLockedError, SlmError, UserError
from slmtrain.generate import generate
from slmtrain.health import SpikeDetector
from slmtrain.hostmem import keep_freed_memory
from slmtrain.rollback import rollback
from slmtrain.lock import RunLock
from slmtrain.log import Console, MetricsWriter, TensorBoard, fmt_count, fmt_duration, read_jsonl
from slmtrain.model import GPT
from slmtrain.plot import CurvesRefresher
from slmtrain.budget import BudgetPlanner
from slmtrain.budgeting import BudgetRun, budget_cut, plan_budget
from slmtrain.optim import build_optimizer, build_scheduler
from slmtrain.preempt import EXIT_ABORTED, EXIT_PREEMPTED, NoticePoller, PreemptionFlag
from slmtrain.saving import Saver, restore
from slmtrain.state import seed_everything
from slmtrain.train import bits_per_byte, compiler_missing, evaluate, perplexity, pick_precision, train_step
from slmtrain.trainstate import RunContext, TrainState


_UNBOUNDED = 2**62  # a budgeted run's length until its step count is fitted


class TrainingDiverged(SlmError):
    """Too many consecutive non-finite steps."""


def resolve_run_dir(cfg: Config, run_dir: str | None) -> Path:
    return Path(run_dir).expanduser() if run_dir else Path(cfg.run.out_dir).expanduser() / cfg.run.name


def process_settings(run: RunConfig) -> None:
    """What a training process sets for itself before it builds anything (`run` and `resume` do)."""
    if run.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; read when its first handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also NaN-fills every new buffer, a guard against kernels that read memory
        # they never wrote; that costs ~4 % of a CPU step here, and nothing slmtrain runs reads one
        # (the exact-resume and determinism tests would see it).
        torch.utils.deterministic.fill_uninitialized_memory = False
    if run.reuse_host_memory:
        keep_freed_memory()
    set_onednn(onednn_wins(run.cpu_matmul))


class RunManager:
    """One attempt at a run: fresh (`resume=False`) or continuing from its newest sound checkpoint."""

    def __init__(self, cfg: Config, run_dir: Path, *, resume: bool, console: Console | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        self.info = dist.from_env()
        self.console = console or Console(enabled=self.info.is_main, progress=cfg.log.progress)
        self.flag = PreemptionFlag()
        self.ckpt_root = run_dir / "checkpoints"

    # ----------------------------------------------------------------------------------------- entry
    def execute(self) -> int:
        """Run to completion or preemption; returns the process exit code (0, 75, 2, 1 or 130)."""
        self.device = dist.pick_device(self.cfg.run.device, self.info)
        dist.init(self.info, self.device, self.cfg.parallel.backend, self.cfg.parallel.timeout_seconds)
        # Whatever ends the attempt, the group goes down while the interpreter is whole: gloo threads left
        # running at exit abort the process (SIGABRT, "terminate called without an active exception").
        try:
            return self._execute()
        finally:
            dist.shutdown()

    def _execute(self) -> int:
        self._check_dir()
        dist.barrier()  # every rank has looked before rank 0 writes run.json
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run directory {self.run_dir} ({e.strerror}): choose a writable "
                            f"place with --run-dir or run.out_dir") from None
        lock = RunLock(self.run_dir) if self.info.is_main else None
        locked_out: RunLockedError | None = None
        if lock is not None:
            try:
                lock.acquire()
            except RunLockedError as e:
                locked_out = e
        # Every rank learns whether rank 0 got the lock, so none trains on a directory another run owns.
        if dist.max_over_ranks(int(locked_out is not None), self.device):
            raise locked_out or RunLockedError(f"rank 0 could not lock {self.run_dir}: see its message")
        poller = None
        self.saver: Saver | None = None
        try:
            self.flag.install()  # before run.json says "running": a signal from here on is handled
            if self.info.is_main:
                if not self.resume:  # a resume rewrites it only once the checkpoint accepted the recipe
                    fsio.atomic_write_text(self.run_dir / "recipe.toml", config_mod.to_toml(self.cfg))
                self.previous_status = runinfo.start_attempt(self.run_dir, "resume" if self.resume else "run")
            c = self.cfg.checkpoint
            if c.notice_file or c.notice_url:
                poller = NoticePoller(self.flag, file=c.notice_file, url=c.notice_url, interval=c.notice_interval)
                poller.start()
            return self._guarded()
        finally:
            if poller is not None:
                poller.stop()
                if poller.errors:
                    self.console.info(f"notice poller: {poller.errors} polls of {c.notice_url} failed "
                                      f"(last: {poller.last_error})")
            self.flag.uninstall()
            self._close_saver()
            curves = getattr(self, "curves", None)
            if curves is not None:
                curves.close()
                if curves.error:
                    self.console.info(f"curves.png could not be drawn: {curves.error}")
            if lock is not None:
                lock.release()

    def _close_saver(self) -> None:
        """A background save still in flight finishes before the lock is released."""
        if self.saver is None:
            return
        try:
            self.saver.close()
        except Exception as e:  # noqa: BLE001 - the run already ended; report, don't mask its exit
            self.console.info(f"the last background checkpoint save failed: {type(e).__name__}: {e}")

    def _check_dir(self) -> None:
        record = runinfo.read(self.run_dir)
        exists = (self.run_dir / runinfo.RUN_JSON).exists()
        # A run that failed before its first checkpoint (bad data, say) may simply be started again.
        if exists and not self.resume and record and record.get("status") == "failed" \
                and not list_checkpoints(self.ckpt_root):
            return
        if exists and not self.resume:
            raise UserError(
                f"run directory {self.run_dir} already holds a run: continue it with `slmtrain resume "
                f"{self.run_dir}` (or `slmtrain run ... --resume`), or start a new one with --run-dir or "
                f"--set run.name=NEW_NAME")
        if self.resume and not exists:
            raise UserError(f"{self.run_dir} is not a run directory (no run.json): start it with `slmtrain run "
                            f"RECIPE.toml --run-dir {self.run_dir}`")

    def _end(self, status: str, code: int, reason: str) -> int:
        if self.info.is_main:
            runinfo.end_attempt(self.run_dir, status, code, reason)
        return code

    def _guarded(self) -> int:
        try:
            return self._train()
        except PrepareInterrupted:
            self.console.info(f"preempted ({self.flag.reason}) during data preparation; nothing to save")
            return self._end("preempted", EXIT_PREEMPTED, f"{self.flag.reason} during data preparation")
        except KeyboardInterrupt:
            self.console.info("aborted by a second SIGINT: no checkpoint written for this attempt")
            return self._end("failed", EXIT_ABORTED, "aborted (second SIGINT)")
        except UserError as e:
            # Bad input changed nothing: a refused resume leaves the run as preempted/finished as it was.
            self._end(getattr(self, "previous_status", None) or "failed", e.exit_code, str(e))
            raise
        except BaseException as e:
            self._end("failed", 1, f"{type(e).__name__}: {e}")
            raise

    # ------------------------------------------------------------------------------------- building
    def _build(self) -> None:
        cfg, info = self.cfg, self.info
        process_settings(cfg.run)
        # Rank 0 builds the cache; the others wait, then reuse it instead of tokenizing the same data again.
        if info.is_main:
            self.prepared = prepare_data(cfg, stop=self.flag.check, log=self.console.info)
        dist.barrier()
        if not info.is_main:
            self.prepared = prepare_data(cfg, stop=self.flag.check, log=lambda _m: None)
        tok = self.tokenizer = self.prepared.tokenizer
        vocab = config_mod.embedding_rows(cfg.model.vocab_size, tok.vocab_size)
        if vocab < tok.vocab_size:
            raise UserError(f"model.vocab_size = {vocab} is smaller than the tokenizer's {tok.vocab_size} tokens: "
                            f"set model.vocab_size = 0 (automatic) or at least {tok.vocab_size}")
        self.cfg = cfg = cfg.replace("model", vocab_size=vocab)
        self.cfg = cfg = cfg.replace("run", precision=self._precision(cfg.run.precision))
        if info.is_main and not self.resume:
            tok.save(self.run_dir / "tokenizer.json")
            fsio.atomic_write_text(self.run_dir / "recipe.toml", config_mod.to_toml(cfg))
        seed_everything(cfg.run.seed)
        model = self.model = GPT(cfg.model).to(self.device)
        if cfg.model.init_from and not self.resume:  # a resume loads the checkpoint's weights instead
            from slmtrain.export import load_init_weights

            load_init_weights(cfg.model.init_from, model, tok.eos_id)
            self.console.info(f"initial weights from {cfg.model.init_from}")
        # FSDP2 replaces the parameters with sharded ones in place: wrap before the optimizer sees them.
        self.parallel_model = dist.wrap_model(model, self.info, self.device, cfg.parallel.strategy)
        optimizer = build_optimizer(model, cfg.optim, self.device.type)
        t = cfg.train
        self.tokens_per_step = t.batch_size * t.grad_accum * cfg.model.seq_len * info.world_size
        # The run's length before a time budget fits it: max_steps, or max_tokens in steps (whichever is set).
        caps = [n for n in (t.max_steps, math.ceil(t.max_tokens / self.tokens_per_step) if t.max_tokens else 0) if n]
        cap = min(caps) if caps else _UNBOUNDED
        scheduler = build_scheduler(optimizer, cfg.schedule, cap, cfg.optim)
        if cfg.health.fault_lr_step:
            h = cfg.health
            for fn in scheduler.lr_lambdas:
                fn.fault, fn.fault_from, fn.fault_until = h.fault_lr_factor, h.fault_lr_step - 1, \
                    h.fault_lr_step - 1 + h.fault_lr_steps
        scaler = torch.amp.GradScaler(self.device.type) if cfg.run.precision == "fp16" else None
        self.ts = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                             detector=SpikeDetector(cfg.health), make_loader=self._loader_at, total_steps=cap,
                             step_cap=cap)
        self.pending_losses: list[tuple[int, torch.Tensor]] = []
        self.pending_skips: list[tuple[int, torch.Tensor]] = []
        ev = cfg.eval
        val_batches = eval_batches(self.prepared.valid_path, cfg.model.seq_len, ev.batch_size or t.batch_size,
                                   ev.batches, cfg.run.seed + 1)
        # Events go nowhere until the metrics file is opened (after a resume has cut the lost attempt's tail).
        self.ctx = RunContext(cfg=cfg, info=info, device=self.device, run_dir=self.run_dir, tokenizer=tok,
                              data_meta=self.prepared.meta, val_batches=val_batches,
                              metrics=MetricsWriter(self.run_dir / "metrics.jsonl", enabled=False),
                              say=self.console.info)

    def _onednn_matmuls(self) -> bool:
        """Whether this run's fp32 products go through oneDNN (`run.cpu_matmul`; autocast runs keep ATen's)."""
        return self.device.type == "cpu" and self.cfg.run.precision == "fp32" and onednn_enabled()

    def _precision(self, name: str) -> str:
        """run.precision made concrete. The run directory's recipe records the pick, so a resume of an "auto"
        run computes in the precision the run started in, whatever machine it lands on."""
        if name == "auto" and self.resume:
            try:
                saved = config_mod.load(self.run_dir / "recipe.toml").run.precision
            except ConfigError:
                saved = "auto"
            if saved != "auto":
                return saved
        return pick_precision(name, self.device)

    def _loader_at(self, start_step: int) -> Any:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        return build_train_loader(
            self.prepared.train_path, cfg.model.seq_len, t.batch_size, cfg.run.seed, info.rank, info.world_size,
            t.grad_accum, cfg.data.loader_workers, pin_memory=self.device.type == "cuda", start_step=start_step)

    def _wrap(self) -> torch.nn.Module:
        if not self.cfg.run.compile:
            return self.parallel_model
        missing = compiler_missing(self.device)
        if missing:
            # The quickstart compiles; without a compiler it must still run, only slower.
            self.console.info(f"run.compile: {missing}; training eager")
            return self.parallel_model
        return torch.compile(self.parallel_model)

    # ----------------------------------------------------------------------------------------- loop
    def _train(self) -> int:
        started = time.monotonic()
        self._build()
        cfg, ts = self.cfg, self.ts
        st = ts.counters
        if self.resume:
            resumed_from = self._restore()
            if st["planned_steps"]:
                ts.set_total_steps(st["planned_steps"])
                if self.info.is_main:  # the checkpoint's count wins over one a lost attempt recorded
                    runinfo.record(self.run_dir, planned_steps=ts.total_steps)
        # Opened after a resume has cut the lost attempt's tail from the files, never before.
        main = self.info.is_main
        tb = TensorBoard.open(self.run_dir / "tensorboard", self.console) if main and cfg.log.tensorboard else None
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", enabled=main, mirror=tb)
        self.samples = MetricsWriter(self.run_dir / "samples.jsonl", enabled=main, mirror=tb)
        self.curves = CurvesRefresher(self.run_dir) if main and cfg.log.curves else None
        self.ctx.metrics = self.metrics
        self.saver = Saver(ts, self.ctx)
        if self.resume and resumed_from is not None:
            self.saver.expect_like(resumed_from)
        if self.resume:
            if resumed_from is not None:
                self.metrics.write("event", event="resume", step=st["step"], checkpoint=resumed_from.name)
            if self.info.is_main:
                self.tokenizer.save(self.run_dir / "tokenizer.json")
                fsio.atomic_write_text(self.run_dir / "recipe.toml", config_mod.to_toml(cfg))
        else:
            self.console.info(f"{self.model.param_summary()} | {cfg.model.flavour} {cfg.model.n_layer}L "
                              f"{cfg.model.n_head}H {cfg.model.n_embd}d ctx {cfg.model.seq_len} | vocab "
                              f"{cfg.model.vocab_size} | device {self.device} {cfg.run.precision}"
                              f"{' (oneDNN matmuls)' if self._onednn_matmuls() else ''}")
            self.metrics.write("event", event="start", step=0, params=self.model.num_params(),
                               non_embedding_params=self.model.num_params(non_embedding=True))
        model = self._wrap()
        batches = iter(ts.loader)
        t = cfg.train
        stop_reason = "finished"
        last_log = time.monotonic()
        tokens_at_log = st["tokens"]
        step_start_seconds = st["train_seconds"]
        self.first_step = st["step"]
        loop_start = time.monotonic()
        budget = t.max_minutes * 60
        planner = BudgetPlanner(t, cfg.schedule, st["step"], st["train_seconds"]) if budget and t.fit_budget else None

        def clock() -> float:
            return step_start_seconds + time.monotonic() - loop_start
        budget_run = BudgetRun(ts, self.ctx, self.saver, evaluate=self.evaluate_now, settle=self.settle, clock=clock)
        if self.resume:
            ready = time.monotonic() - started
            self.metrics.write("event", event="resume_ready", step=st["step"], seconds=round(ready, 3))
            self.console.info(f"resumed at step {st['step']}: {ready:.2f}s from start to the first new step")
        while True:
            if st["step"] >= ts.total_steps:
                break
            if t.max_tokens and st["tokens"] >= t.max_tokens:
                break
            elapsed = step_start_seconds + time.monotonic() - loop_start
            # Past the budget (and its overrun allowance) less the final evaluation and save: stop short.
            allowance = t.budget_overrun if st["planned_steps"] else 0.0
            over = bool(budget) and elapsed >= budget * (1 + allowance) - st["budget_reserve_seconds"]
            # Clocks and signals are per process: one collective makes every rank stop at the same step.
            verdict = dist.max_over_ranks(2 if self.flag.is_set else int(over), self.device)
            if verdict:
                stop_reason = "preempted" if verdict == 2 else "finished (max_minutes)"
                if verdict == 1:
                    budget_cut(ts, self.ctx)
                break
            self.saver.poll()
            stats = train_step(model, batches, ts.optimizer, ts.scheduler, grad_accum=t.grad_accum,
                               grad_clip=cfg.optim.grad_clip, device=self.device, precision=cfg.run.precision,
                               scaler=ts.scaler, fused_head_loss=t.fused_head_loss)
            st["step"] += 1
            st["tokens"] += stats.tokens * self.info.world_size
            st["train_seconds"] = step_start_seconds + time.monotonic() - loop_start
            step = st["step"]
            self.pending_losses.append((step, stats.loss))
            if isinstance(stats.skipped, torch.Tensor):
                self.pending_skips.append((step, stats.skipped))
            else:
                self._after_skip(stats.skipped, step)
            if planner is not None:
                plan_budget(budget_run, planner)
            if step % cfg.log.every_steps == 0 or step == 1 or step == ts.total_steps:
                self.settle()
                # .item() syncs with the device: only on log steps.
                loss = dist.all_mean(stats.loss.item(), self.device)
                now = time.monotonic()
                tps = (st["tokens"] - tokens_at_log) / max(1e-9, now - last_log)
                last_log, tokens_at_log = now, st["tokens"]
                lr = stats.lr
                self.metrics.write("train", step=step, tokens=st["tokens"], loss=loss, lr=lr,
                                   grad_norm=float(stats.grad_norm.item()), tokens_per_s=round(tps, 1))
                eta = (ts.total_steps - step) * self.tokens_per_step / max(tps, 1e-9)
                total = "?" if ts.total_steps == _UNBOUNDED else ts.total_steps
                self.console.progress(f"step {step}/{total} | loss {loss:.4f} | lr {lr:.2e} | "
                                      f"{fmt_count(tps)} tok/s | ETA {fmt_duration(eta) if total != '?' else '?'}")
                # Decisions happen on log steps only, so a preempted and resumed run decides at the same steps.
                if st["pending_rollback"] is not None:
                    rollback(ts, self.ctx, self.saver)
                    self.pending_losses.clear()
                    self.pending_skips.clear()
                    batches = iter(ts.loader)
                    # The token count went back with the state: the next rate is measured from here.
                    last_log, tokens_at_log = time.monotonic(), st["tokens"]
                    continue
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < ts.total_steps:
                self.evaluate_now()
            if step == self.first_step + 3:  # a few steps into every attempt, once the timing means something
                self.saver.warn_if_over_grace((st["train_seconds"] - step_start_seconds) / 3)
            if self.saver.periodic_due():
                self.settle()
                self.saver.save(reason="periodic")
        self.settle()
        if stop_reason == "preempted":
            return self._preempt_exit()
        if ts.last_eval is None or ts.last_eval[0] != st["step"]:
            self.evaluate_now()
        self.saver.save(reason="final", wait=True)
        # The training loop's time as a budget counts it: steps, evaluations and saves, the final ones included.
        st["train_seconds"] = step_start_seconds + time.monotonic() - loop_start
        self._summary(time.monotonic() - started)
        self.metrics.close()
        self.samples.close()
        return self._end("finished", 0, stop_reason)

    def _settle_losses(self) -> None:
        """Feed the pending step losses to the spike detector (one sync); a spike becomes a pending rollback,
        acted on at the next log step (so a resumed run acts at the same step)."""
        if not self.pending_losses:
            return
        # Every rank must see the same losses to take the same decision: the mean over ranks.
        values = dist.all_mean_tensor(torch.stack([v.float() for _, v in self.pending_losses])).tolist()
        steps = [s for s, _ in self.pending_losses]
        self.pending_losses.clear()
        st, h = self.ts.counters, self.cfg.health
        for step, loss in zip(steps, values):
            verdict = self.ts.detector.update(step, loss)
            if verdict.spike and h.rollback and st["pending_rollback"] is None:
                st["pending_rollback"] = [verdict.first_bad, f"loss spike ({h.patience} losses in a row far above "
                                                             f"the last {h.window}, the last {loss:.4f})"]

    def settle(self) -> None:
        """Read the pending per-step device values (one sync each): skipped-step flags, then losses."""
        self._settle_losses()
        if not self.pending_skips:
            return
        flags = torch.stack([f for _, f in self.pending_skips]).tolist()
        steps = [s for s, _ in self.pending_skips]
        self.pending_skips.clear()
        for step, flag in zip(steps, flags):
            self._after_skip(bool(flag), step)

    def _after_skip(self, skipped: bool, step: int) -> None:
        st = self.ts.counters
        if not skipped:
            st["consecutive_skipped"] = 0
            return
        st["skipped"] += 1
        st["consecutive_skipped"] += 1
        self.metrics.write("event", event="skipped_step", step=step, reason="non-finite loss or gradients",
                           consecutive=st["consecutive_skipped"])
        self.console.info(f"step {step}: non-finite loss or gradients, update skipped "
                          f"({st['consecutive_skipped']} in a row)")
        if st["consecutive_skipped"] > self.cfg.train.skip_nonfinite and self.cfg.health.rollback:
            if st["pending_rollback"] is None:
                st["pending_rollback"] = [step - st["consecutive_skipped"] + 1,
                                          f"{st['consecutive_skipped']} consecutive non-finite steps"]
            return
        if st["consecutive_skipped"] > self.cfg.train.skip_nonfinite:
            raise TrainingDiverged(f"{st['consecutive_skipped']} consecutive non-finite steps (train.skip_nonfinite "
                                   f"= {self.cfg.train.skip_nonfinite}): lower optim.lr or raise optim.grad_clip, "
                                   f"then resume from the last checkpoint")

    def _preempt_exit(self) -> int:
        reason = self.flag.reason or "signal"
        step = self.ts.counters["step"]
        self.console.info(f"preemption ({reason}) at step {step}: saving")
        self.metrics.write("event", event="preempt", step=step, signal=reason)
        self.saver.save(reason="preempt", wait=True)
        since = self.flag.seconds_since() or 0.0
        grace = self.cfg.checkpoint.grace_seconds
        over = since > grace
        self.metrics.write("event", event="preempt_saved", step=step, seconds=round(since, 3),
                           grace_seconds=grace, over_grace=over)
        self.console.info(f"checkpoint durable {since:.2f}s after {reason} (grace {grace:.0f}s"
                          f"{', EXCEEDED' if over else ''}); exiting {EXIT_PREEMPTED} so the scheduler requeues")
        self.metrics.close()
        self.samples.close()
        return self._end("preempted", EXIT_PREEMPTED, f"{reason} at step {step}")

    def evaluate_now(self) -> None:
        cfg, st = self.cfg, self.ts.counters
        # One process may cut evaluation short on preemption; ranks must not, or their collectives would pair up wrong.
        stop = self.flag.check if not self.info.enabled else None
        loss = evaluate(self.model, self.ctx.val_batches, self.device, cfg.run.precision, should_stop=stop)
        if loss is None:
            return
        loss = dist.all_mean(loss, self.device)
        self.ts.last_eval = (st["step"], loss)
        if st["best_val_loss"] is None or loss < st["best_val_loss"]:
            st["best_val_loss"] = loss
        bpb = bits_per_byte(loss, self.prepared.meta["splits"]["valid"]["tokens_per_byte"])
        self.metrics.write("eval", step=st["step"], tokens=st["tokens"], val_loss=loss, val_ppl=perplexity(loss),
                           val_bpb=bpb)
        self.console.info(f"eval step {st['step']}: val_loss {loss:.4f} | ppl {perplexity(loss):.2f} | "
                          f"bpb {bpb:.3f}")
        for i in range(cfg.eval.samples):
            prompt = cfg.eval.prompts[i % len(cfg.eval.prompts)]
            text = self.sample(prompt, seed=cfg.run.seed + 1000 * st["step"] + i)
            self.samples.write("sample", step=st["step"], prompt=prompt, text=text)
        if self.curves is not None:
            self.curves.request()

    def sample(self, prompt: str, seed: int) -> str:
        """One generation with the eval settings, from its own RNG so training randomness is untouched."""
        ev = self.cfg.eval
        gen = torch.Generator(device=self.device).manual_seed(seed)
        ids = self.tokenizer.encode(prompt)
        out = list(generate(self.model, ids, ev.sample_tokens, temperature=ev.temperature, top_k=ev.top_k,
                            eos_id=self.tokenizer.eos_id, generator=gen))
        return self.tokenizer.decode(ids + out)

    def _restore(self) -> Path | None:
        """Load the newest sound checkpoint, if any; returns it."""
        for name in cleanup_tmp(self.ckpt_root):
            self.console.info(f"removed {name}: an unfinished save from a crashed attempt")
        path = find_resume(self.ckpt_root, log=self.console.info)
        if path is None:
            if list_checkpoints(self.ckpt_root):
                raise CheckpointError(f"no sound checkpoint in {self.ckpt_root} (see the problems above); nothing "
                                      f"was deleted. Inspect them with `slmtrain status {self.run_dir}`")
            self.console.info("no checkpoint yet: starting from step 0")
            self._truncate_metrics(0)
            return None
        step = restore(self.ts, self.ctx, path)
        self._truncate_metrics(step)
        self.console.info(f"resuming from {path.name} (step {step}, {fmt_count(self.ts.counters['tokens'])} tokens)")
        return path

    def _truncate_metrics(self, step: int) -> None:
        """Drop records past the checkpoint (the lost attempt's tail) so metrics.jsonl reads as one run."""
        if not self.info.is_main:
            return
        for path in (self.run_dir / "metrics.jsonl", self.run_dir / "samples.jsonl"):
            if path.exists():
                kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
                fsio.atomic_write_bytes(path, b"".join(fsio.dumps_jsonl(r) for r in kept))

    def _summary(self, wall: float) -> None:
        """Figures over the whole run (all attempts), read back from metrics.jsonl."""
        st = self.ts.counters
        records = read_jsonl(self.run_dir / "metrics.jsonl")
        train = [r["loss"] for r in records if r.get("kind") == "train"]
        val = [r["val_loss"] for r in records if r.get("kind") == "eval"]
        story = self.sample(self.cfg.eval.prompts[0], seed=self.cfg.run.seed)
        lines = [
            "-" * 72,
            f"finished: {st['step']} steps, {fmt_count(st['tokens'])} tokens in {fmt_duration(wall)} | "
            f"{self.model.param_summary()}",
        ]
        if train:
            lines.append(f"train loss: first {train[0]:.4f} -> last {train[-1]:.4f}")
        if val:
            best = min(val)
            lines.append(f"val loss: first {val[0]:.4f} (ppl {perplexity(val[0]):.2f}) | best {best:.4f} "
                         f"(ppl {perplexity(best):.2f}) | last {val[-1]:.4f} (ppl {perplexity(val[-1]):.2f})")
        if st["skipped"]:
            lines.append(f"skipped steps (non-finite): {st['skipped']}")
        lines += [f"checkpoint: {self.saver.last_path}", "sample:", story, "-" * 72]
        self.console.info("\n".join(lines))
        self.metrics.write("event", event="summary", step=st["step"], tokens=st["tokens"], wall_seconds=round(wall, 3),
                           train_seconds=round(st["train_seconds"], 3), sample=story)
