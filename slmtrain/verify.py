"""`slmtrain verify`: prove a checkpoint sound from its own files, on CPU, in fp32.

Checks, in this order; each ends as pass, fail, warn or skip (its prerequisite failed), and an exception
inside a check becomes that check's failure, so the verifier never crashes on garbage:

    manifest      every file listed in meta.json is there with its size and sha256, nothing else is,
                  meta.json matches its own digest
    config        config.json parses, its recipe validates, the model config builds
    weights       the model rebuilt from config.json alone; model/ lists exactly its keys with the
                  configured shapes, stored as float32; strict load; every weight finite
    tied_weights  tied: the output projection IS wte.weight and model/ holds no lm_head.weight (the
                  matrix is stored once); untied: both are stored
    tokenizer     tokenizer.json loads, its fingerprint equals config.json's and meta.json's; its
                  vocabulary fits the embedding, whose rows equal model.vocab_size
    optimizer     optim/ holds, for every parameter and nothing else, finite AdamW exp_avg and exp_avg_sq, or
                  (optim.name = "muon", hidden matrices) Muon's momentum_buffer, each of the parameter's
                  shape; AdamW's step equals the trainer's step minus skipped steps
                  (at most that with an fp16 grad scaler, which skips steps on its own); param_groups
                  cover every parameter once
    scheduler     the LR scheduler's last_epoch and the trainer's step equal the checkpoint's step;
                  tokens == step x batch_size x grad_accum x seq_len x world_size
    generations   every recorded greedy continuation replays token for token; a token may differ only
                  where the recorded top-1/top-2 logit margin was below MARGIN_TOLERANCE (0.05): there
                  fp32 reassociation can flip an argmax, so the rest of that continuation is not
                  compared and the check warns (fails under --strict)
    logprobs      on the stored batch (reference.safetensors), |loss - recorded| <= LOSS_TOLERANCE
                  (1e-3 nats) and the mean per-position KL(recorded || replayed) <= KL_TOLERANCE (1e-4)

A checkpoint is sound when no check fails. The tolerances live in `slmtrain.reference`, which also
records them. Trust: DCP's `.metadata` files are pickles. Verify (like generate and eval) first reads
them with an unpickler that only builds DCP's own metadata types, reads optimizer values with
`weights_only` (both in `slmtrain.ckptload`), and never opens the `rank_*.pt` files, so verifying a
checkpoint runs no code from it (resuming training from it still unpickles, as with any torch checkpoint).

The checks of files and model live in `slmtrain.verify_checks`; the optimizer and scheduler checks, the
order and the driver live here.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from slmtrain.checkpoint import read_meta
from slmtrain.ckptload import checkpoints_root, is_checkpoint_dir, load_flat, one_line, read_dcp_metadata, step_dirs
from slmtrain.errors import CheckpointError, UserError
from slmtrain.manifest import LATEST_FILE
from slmtrain.optim import muon_parameters
from slmtrain.verify_checks import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    Ctx,
    Fail,
    Skip,
    cap,
    check_config,
    check_generations,
    check_logprobs,
    check_manifest,
    check_tied,
    check_tokenizer,
    check_weights,
    finite_range,
    key_names,
)

OPTIM_DIR = "optim"
_ADAMW_STATS = ("exp_avg", "exp_avg_sq", "step")
_MUON_STATS = ("momentum_buffer",)
_DETAIL_CHARS = 600


@dataclass
class Check:
    """One named check: status is "pass", "fail", "warn" or "skip"."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0


@dataclass
class Report:
    """Every check of one checkpoint. Sound when none failed."""

    path: str
    checks: list[Check]
    seconds: float

    @property
    def sound(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """{"path", "sound", "checks": [{"name", "status", "detail", "seconds"}], "seconds"}."""
        return {"path": self.path, "sound": self.sound,
                "checks": [{**asdict(c), "seconds": round(c.seconds, 4)} for c in self.checks],
                "seconds": round(self.seconds, 4)}

    def format(self) -> str:
        """One line per check, then SOUND or NOT SOUND."""
        lines = [f"verify {self.path}"]
        lines += [f"{c.status.upper()} {c.name}: {c.detail}" for c in self.checks]
        failed = [c.name for c in self.checks if c.status == FAIL]
        if failed:
            lines.append(f"NOT SOUND: {len(failed)} check(s) failed ({', '.join(failed)}) in {self.seconds:.2f}s")
        else:
            warned = sum(c.status == WARN for c in self.checks)
            lines.append(f"SOUND: {len(self.checks)} checks passed{f' ({warned} with warnings)' if warned else ''} "
                         f"in {self.seconds:.2f}s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- optimizer, scheduler
def _optim_entries(md: Metadata) -> tuple[dict[str, dict[str, str]], dict[int, dict[str, str]], list[str]]:
    """({fqn: {stat: key}}, {group: {field: key}}, other keys) from DCP's flattening paths."""
    paths = md.planner_data if isinstance(md.planner_data, dict) else {}
    state: dict[str, dict[str, str]] = {}
    groups: dict[int, dict[str, str]] = {}
    other = []
    for key in md.state_dict_metadata:
        path = paths.get(key)
        path = list(path) if isinstance(path, (tuple, list)) else key.split(".")
        if path[:1] == ["optim"]:
            path = path[1:]
        if len(path) == 3 and path[0] == "state":
            state.setdefault(str(path[1]), {})[str(path[2])] = key
        elif len(path) == 3 and path[0] == "param_groups" and str(path[1]).isdigit():
            groups.setdefault(int(path[1]), {})[str(path[2])] = key
        else:
            other.append(key)
    return state, groups, other


def _check_optimizer(ctx: Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    cfg = ctx.need_cfg()
    assert ctx.skeleton is not None
    md = read_dcp_metadata(ctx.path / OPTIM_DIR)
    state, groups, other = _optim_entries(md)
    params = {n: tuple(p.shape) for n, p in ctx.skeleton.named_parameters()}
    muon = muon_parameters(ctx.skeleton, cfg.optim)
    trainer = meta["trainer"]
    updates = _int(trainer["step"], "trainer step") - _int(trainer.get("skipped", 0), "trainer skipped")
    scaler = meta.get("scaler") is not None
    problems = []
    if unknown := [n for n in state if n not in params]:
        problems.append(f"state for unknown parameters {key_names(unknown)}")
    if other:
        problems.append(f"unexpected entries {key_names(other)}")
    entries = md.state_dict_metadata
    for name, shape in params.items():
        stats = state.get(name)
        if stats is None:
            if updates > 0 and not scaler:
                problems.append(f"no state for parameter {name}")
            continue
        expected = _MUON_STATS if name in muon else _ADAMW_STATS
        if extra := sorted(set(stats) - set(expected)):
            problems.append(f"{name}: unexpected {'/'.join(extra)} for a {'Muon' if name in muon else 'AdamW'} "
                            f"parameter")
        for stat in expected:
            m = entries.get(stats.get(stat, ""))
            want = shape if stat != "step" else ()
            if not isinstance(m, TensorStorageMetadata):
                problems.append(f"{name}: no {stat} tensor")
            elif tuple(m.size) != want and not (stat == "step" and m.size.numel() == 1):
                problems.append(f"{name}: {stat} shape {list(m.size)} != parameter shape {list(want)}")
    if not groups or any("params" not in g for g in groups.values()):
        problems.append("param_groups missing or without 'params'")
    if problems:
        raise Fail(cap(problems))
    tensors, objects = load_flat(ctx.path / OPTIM_DIR, md, list(entries))
    steps = {n: float(tensors[s["step"]].reshape(-1)[0]) for n, s in state.items() if "step" in s}
    for name, stats in state.items():
        for stat in _MUON_STATS if name in muon else ("exp_avg", "exp_avg_sq"):
            t = tensors[stats[stat]]
            finite, low = finite_range(t)
            if not finite or (stat == "exp_avg_sq" and low < 0):
                problems.append(f"{name}: {stat} holds non-finite{' or negative' if stat == 'exp_avg_sq' else ''} "
                                f"values")
    off = {n: s for n, s in steps.items() if (s > updates if scaler else s != updates)}
    if off:
        name, s = next(iter(off.items()))
        rule = "at most" if scaler else "equal to"
        problems.append(f"AdamW step {s:g} for {name} ({len(off)} of {len(steps)} parameters) is not {rule} the "
                        f"trainer's step {trainer['step']} minus {trainer.get('skipped', 0)} skipped = {updates}")
    listed = [p for g in sorted(groups) for p in (objects.get(groups[g]["params"]) or [])]
    if sorted(map(str, listed)) != sorted(params):
        problems.append(f"param_groups list {len(listed)} parameters ({len(set(map(str, listed)))} distinct), the "
                        f"model has {len(params)}")
    if problems:
        raise Fail(cap(problems))
    adam = len(state) - len(muon & set(state))
    return PASS, (f"{adam} parameters with exp_avg/exp_avg_sq, AdamW step {updates}"
                  f"{' (grad scaler)' if scaler else ''}"
                  f"{f', {len(muon & set(state))} Muon matrices with momentum_buffer' if muon else ''}, "
                  f"{len(groups)} param groups")


def _check_scheduler(ctx: Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    cfg = ctx.need_cfg()
    trainer = meta["trainer"]
    step, tokens = _int(meta["step"], "step"), _int(meta["tokens"], "tokens")
    problems = []
    last_epoch = _int(meta["scheduler"]["last_epoch"], "scheduler last_epoch")
    if last_epoch != step:
        problems.append(f"scheduler last_epoch {last_epoch} != step {step}")
    if _int(trainer["step"], "trainer step") != step:
        problems.append(f"trainer step {trainer['step']} != step {step}")
    if _int(trainer["tokens"], "trainer tokens") != tokens:
        problems.append(f"tokens {tokens} != trainer tokens {trainer['tokens']}")
    t = cfg.train
    # Every step adds this per process; a run resumed at another world size mixes world sizes.
    per_process = t.batch_size * t.grad_accum * cfg.model.seq_len
    if tokens % per_process or tokens < step * per_process:
        problems.append(f"tokens {tokens} is not a whole number of steps of {per_process} tokens per process "
                        f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x seq_len {cfg.model.seq_len}) "
                        f"covering step {step}")
    if problems:
        raise Fail("; ".join(problems))
    return PASS, f"step {step}, scheduler last_epoch {last_epoch}, {tokens:,} tokens"


CHECKS: list[tuple[str, Callable[[Ctx], tuple[str, str]]]] = [
    ("manifest", check_manifest), ("config", check_config), ("weights", check_weights),
    ("tied_weights", check_tied), ("tokenizer", check_tokenizer), ("optimizer", _check_optimizer),
    ("scheduler", _check_scheduler), ("generations", check_generations), ("logprobs", check_logprobs),
]


# ---------------------------------------------------------------------------------------------- driver
def verify(path: str | Path, strict: bool = False) -> Report:
    """Run every check on one checkpoint directory. Never raises (but for KeyboardInterrupt).

    Args:
        path: a checkpoint directory (see `resolve_targets` for run directories).
        strict: a warning (a replayed token differing where the recorded margin was tiny) fails.
    """
    started = time.perf_counter()
    ctx = Ctx(Path(path))
    checks = []
    with warnings.catch_warnings(), _one_thread():
        warnings.simplefilter("ignore")  # DCP warns about running without a process group
        try:
            ctx.meta = read_meta(ctx.path)
        except (CheckpointError, OSError) as e:
            ctx.meta_problem = str(e)
        for name, fn in CHECKS:
            t0 = time.perf_counter()
            try:
                status, detail = fn(ctx)
            except Skip as e:
                status, detail = SKIP, str(e)
            except (Fail, CheckpointError) as e:
                status, detail = FAIL, str(e)
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - garbage raises anything; report it
                status, detail = FAIL, f"{type(e).__name__}: {one_line(e, _DETAIL_CHARS)}"
            if strict and status == WARN:
                status, detail = FAIL, f"{detail} (--strict)"
            checks.append(Check(name, status, one_line(detail, _DETAIL_CHARS * 2), time.perf_counter() - t0))
    return Report(str(path), checks, time.perf_counter() - started)


def resolve_targets(path: str | Path, all_checkpoints: bool = False,
                    log: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """The checkpoint directories `slmtrain verify PATH` checks.

    A checkpoint directory is itself. A run directory (or its checkpoints/ directory) gives the checkpoint
    `latest` names (the newest step_N when `latest` is missing or dangling, told to `log`), or with
    `all_checkpoints` every step_N, oldest first.

    Raises:
        UserError: `path` does not exist, is neither, or the run has no checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} {'is not a directory' if path.exists() else 'does not exist'}: pass a checkpoint "
                        f"directory (runs/NAME/checkpoints/step_N) or a run directory (runs/NAME)")
    if is_checkpoint_dir(path):
        return [path]
    root = checkpoints_root(path)
    dirs = step_dirs(root) if root is not None else []
    if not dirs:
        raise UserError(f"{path} holds no checkpoint (no checkpoints/step_N directory): pass a checkpoint directory "
                        f"or a run directory that has saved one")
    if all_checkpoints:
        return dirs
    assert root is not None
    try:
        named = root / (root / LATEST_FILE).read_text(encoding="utf-8").strip()
        if named.parent == root and named in dirs:
            return [named]
        log(f"{root / LATEST_FILE} names {named.name!r:.60}, which is not a checkpoint here; verifying the newest, "
            f"{dirs[-1].name}")
    except (OSError, UnicodeDecodeError):
        log(f"{root / LATEST_FILE} is missing or unreadable; verifying the newest checkpoint, {dirs[-1].name}")
    return [dirs[-1]]


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread for the duration.

    Verify's work is small, latency-bound ops (batch-1 decoding, reductions) that gain nothing from more
    threads, and beside other jobs spinning OpenMP threads make them many times slower: a 20M-parameter
    checkpoint verified in 1.0s on one thread and 4.7s on two, on a 2-core machine with one other job.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise Fail(f"meta.json: {what} {value!r:.40} is not an integer")
    return value

