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
    optimizer     optim/ holds exp_avg and exp_avg_sq with each parameter's shape for every parameter
                  and nothing else, finite; AdamW's step equals the trainer's step minus skipped steps
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
`weights_only`, and never opens the `rank_*.pt` files, so verifying a checkpoint runs no code from it
(resuming training from it still unpickles, as with any torch checkpoint).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from slmtrain import config as config_mod
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.errors import CheckpointError, UserError
from slmtrain.evaluate import (
    CONFIG_FILE,
    MODEL_PREFIX,
    TOKENIZER_FILE,
    build_model,
    checkpoints_root,
    is_checkpoint_dir,
    load_weights,
    read_config,
    read_dcp_metadata,
    step_dirs,
)
from slmtrain.generate import greedy_with_margins, next_token_logprobs
from slmtrain.checkpoint import read_meta
from slmtrain.manifest import LATEST_FILE, META_FILE, MODEL_DIR, verify_manifest
from slmtrain.model import GPT
from slmtrain.reference import KL_TOLERANCE, LOSS_TOLERANCE, MARGIN_TOLERANCE

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
OPTIM_DIR = "optim"
REFERENCE_FILE = "reference.safetensors"
_DETAIL_CHARS = 600


class _Fail(Exception):
    """The check found a problem; the message says which."""


class _Skip(Exception):
    """The check cannot run because an earlier one failed."""


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


@dataclass
class _Ctx:
    """What the checks learn and hand on to the later ones."""

    path: Path
    meta: dict[str, Any] | None = None
    meta_problem: str = ""
    raw_config: dict[str, Any] | None = None
    cfg: config_mod.Config | None = None
    skeleton: GPT | None = None  # on the meta device: names and shapes, no storage
    model_keys: dict[str, tuple[tuple[int, ...], torch.dtype] | None] | None = None  # None: not a tensor
    model: GPT | None = None  # loaded, sound weights
    tokenizer: Tokenizer | None = None

    def need_meta(self) -> dict[str, Any]:
        if self.meta is None:
            raise _Skip(f"needs meta.json ({self.meta_problem})")
        return self.meta

    def need_cfg(self) -> config_mod.Config:
        if self.cfg is None or self.skeleton is None:
            raise _Skip("needs a valid config.json (see config)")
        return self.cfg

    def need_model(self) -> GPT:
        if self.model is None:
            raise _Skip("needs the loaded weights (see weights)")
        return self.model


# ------------------------------------------------------------------------------------ DCP, read safely
class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return read_dcp_metadata(Path(self.path))


class _SafePlanner(DefaultLoadPlanner):
    """Loads flat keys; non-tensor values are unpickled with weights_only and collected in `objects`."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.objects: dict[str, Any] = {}

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        self.objects[read_item.dest_index.fqn] = torch.load(value, weights_only=True)


def _load_flat(directory: Path, md: Metadata, keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The values of `keys` (flat DCP keys) of one DCP directory: (tensors, other objects)."""
    state: dict[str, Any] = {}
    for k in keys:
        m = md.state_dict_metadata[k]
        state[k] = torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
    planner = _SafePlanner()
    no_dist = not (dist.is_available() and dist.is_initialized())
    try:
        dcp.load(state, storage_reader=_SafeReader(directory), planner=planner, no_dist=no_dist)
    except CheckpointException as e:
        failures = [f"{type(err).__name__}: {_short(err)}" for err, *_ in (e.failures or {}).values()]
        raise _Fail(f"cannot read {directory.name}/: {'; '.join(failures) or _short(e)}") from None
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, planner.objects


def _tensor_entries(md: Metadata) -> dict[str, tuple[tuple[int, ...], torch.dtype] | None]:
    """{key: (shape, dtype)} of a DCP directory; None for a non-tensor (bytes) entry."""
    return {k: (tuple(v.size), v.properties.dtype) if isinstance(v, TensorStorageMetadata) else None
            for k, v in md.state_dict_metadata.items()}


# ------------------------------------------------------------------------------------------------ checks
def _check_manifest(ctx: _Ctx) -> tuple[str, str]:
    problems = verify_manifest(ctx.path)
    if problems:
        raise _Fail("; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))
    files = ctx.need_meta()["files"]
    return PASS, f"{len(files)} files, sizes and sha256 match, no stray files"


def _check_config(ctx: _Ctx) -> tuple[str, str]:
    raw, cfg = read_config(ctx.path)
    dtype = raw.get("dtype", "float32")
    if dtype != "float32":
        raise _Fail(f"config.json: dtype {dtype!r:.40} unsupported (checkpoints store float32 weights)")
    try:
        with torch.device("meta"):
            skeleton = GPT(cfg.model)
    except ValueError as e:
        raise _Fail(f"config.json: the model config does not build: {e}") from None
    ctx.raw_config, ctx.cfg, ctx.skeleton = raw, cfg, skeleton
    m = cfg.model
    return PASS, (f"recipe valid; {m.flavour} {m.n_layer}L {m.n_head}H {m.n_embd}d ctx {m.seq_len} vocab "
                  f"{m.vocab_size}, {skeleton.num_params():,} parameters")


def _check_weights(ctx: _Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    assert ctx.skeleton is not None
    found = _tensor_entries(read_dcp_metadata(ctx.path / MODEL_DIR))
    ctx.model_keys = found
    expected = {MODEL_PREFIX + k: tuple(v.shape) for k, v in ctx.skeleton.state_dict().items()}
    problems = []
    if missing := [k for k in expected if k not in found]:
        problems.append(f"missing {_names(missing)}")
    if unexpected := [k for k in found if k not in expected]:
        problems.append(f"unexpected {_names(unexpected)}")
    shapes = [f"{_bare(k)} {list(found[k][0])} != {list(shape)}" for k, shape in expected.items()
              if found.get(k) is not None and found[k][0] != shape]
    if shapes:
        problems.append(f"shape mismatch (file != config.json): {', '.join(shapes[:3])}"
                        + (f" (+{len(shapes) - 3} more)" if len(shapes) > 3 else ""))
    if problems:
        raise _Fail(f"model/ does not match config.json's model: {'; '.join(problems)}")
    bad = {k: v[1] for k, v in found.items() if v is not None and v[1] != torch.float32}
    if bad:
        dtypes = sorted({str(d).removeprefix("torch.") for d in bad.values()})
        raise _Fail(f"weights stored as {'/'.join(dtypes)} ({len(bad)} of {len(found)} tensors, e.g. "
                    f"{_bare(next(iter(bad)))}), but config.json says float32")
    model = build_model(cfg.model, "cpu")
    load_weights(ctx.path, model)
    nonfinite = [k for k, v in model.state_dict().items() if not _finite_range(v)[0]]
    if nonfinite:
        raise _Fail(f"non-finite values (nan/inf) in {_names(nonfinite)}")
    ctx.model = model.eval()
    return PASS, f"{len(found)} tensors, {model.num_params():,} parameters, float32, strict load, all finite"


def _check_tied(ctx: _Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    if ctx.model_keys is None:
        raise _Skip("needs model/ metadata (see weights)")
    head, wte = MODEL_PREFIX + "lm_head.weight", MODEL_PREFIX + "wte.weight"
    if cfg.model.tie_embeddings:
        if head in ctx.model_keys:
            raise _Fail("config.json says tie_embeddings = true but model/ holds a separate output matrix "
                        "lm_head.weight: the tie was broken")
        if ctx.model is not None and ctx.model.output_weight is not ctx.model.wte.weight:
            raise _Fail("the rebuilt model's output projection is not wte.weight")
        return PASS, "output projection is wte.weight, stored once"
    if head not in ctx.model_keys or wte not in ctx.model_keys:
        raise _Fail(f"config.json says tie_embeddings = false but model/ lacks "
                    f"{_names([k for k in (wte, head) if k not in ctx.model_keys])}")
    m = ctx.model
    if m is not None and m.output_weight.data_ptr() == m.wte.weight.data_ptr():
        raise _Fail("untied model, but lm_head.weight and wte.weight share storage after load")
    return PASS, "untied: wte.weight and lm_head.weight stored separately"


def _check_tokenizer(ctx: _Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    try:
        tok = Tokenizer.from_file(ctx.path / TOKENIZER_FILE)
    except UserError as e:
        raise _Fail(str(e)) from None
    problems = []
    fp = tok.fingerprint
    assert ctx.raw_config is not None
    for where, recorded in ((CONFIG_FILE, ctx.raw_config.get("tokenizer_fingerprint")),
                            (META_FILE, (ctx.meta or {}).get("tokenizer_fingerprint"))):
        if ctx.meta is None and where == META_FILE:
            continue
        if recorded != fp:
            problems.append(f"tokenizer.json fingerprint {fp[:12]}... != {where}'s {str(recorded)[:12]!r}... "
                            f"(another tokenizer)")
    vocab = cfg.model.vocab_size
    if tok.vocab_size > vocab:
        problems.append(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is {vocab}")
    wte = (ctx.model_keys or {}).get(MODEL_PREFIX + "wte.weight")
    if wte is not None and wte[0][0] != vocab:
        problems.append(f"the embedding in model/ has {wte[0][0]} rows but config.json says vocab_size {vocab}")
    if problems:
        raise _Fail("; ".join(problems))
    ctx.tokenizer = tok
    return PASS, f"fingerprint {fp[:12]}... matches config.json and meta.json; {tok.vocab_size} tokens <= {vocab} rows"


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


def _check_optimizer(ctx: _Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    ctx.need_cfg()
    assert ctx.skeleton is not None
    md = read_dcp_metadata(ctx.path / OPTIM_DIR)
    state, groups, other = _optim_entries(md)
    params = {n: tuple(p.shape) for n, p in ctx.skeleton.named_parameters()}
    trainer = meta["trainer"]
    updates = _int(trainer["step"], "trainer step") - _int(trainer.get("skipped", 0), "trainer skipped")
    scaler = meta.get("scaler") is not None
    problems = []
    if unknown := [n for n in state if n not in params]:
        problems.append(f"state for unknown parameters {_names(unknown)}")
    if other:
        problems.append(f"unexpected entries {_names(other)}")
    entries = md.state_dict_metadata
    for name, shape in params.items():
        stats = state.get(name)
        if stats is None:
            if updates > 0 and not scaler:
                problems.append(f"no state for parameter {name}")
            continue
        for stat in ("exp_avg", "exp_avg_sq", "step"):
            m = entries.get(stats.get(stat, ""))
            want = shape if stat != "step" else ()
            if not isinstance(m, TensorStorageMetadata):
                problems.append(f"{name}: no {stat} tensor")
            elif tuple(m.size) != want and not (stat == "step" and m.size.numel() == 1):
                problems.append(f"{name}: {stat} shape {list(m.size)} != parameter shape {list(want)}")
    if not groups or any("params" not in g for g in groups.values()):
        problems.append("param_groups missing or without 'params'")
    if problems:
        raise _Fail(_cap(problems))
    tensors, objects = _load_flat(ctx.path / OPTIM_DIR, md, list(entries))
    steps = {n: float(tensors[s["step"]].reshape(-1)[0]) for n, s in state.items()}
    for name, stats in state.items():
        for stat in ("exp_avg", "exp_avg_sq"):
            t = tensors[stats[stat]]
            finite, low = _finite_range(t)
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
        raise _Fail(_cap(problems))
    return PASS, (f"{len(state)} parameters with exp_avg/exp_avg_sq, AdamW step {updates}"
                  f"{' (grad scaler)' if scaler else ''}, {len(groups)} param groups")


def _check_scheduler(ctx: _Ctx) -> tuple[str, str]:
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
        raise _Fail("; ".join(problems))
    return PASS, f"step {step}, scheduler last_epoch {last_epoch}, {tokens:,} tokens"


def _check_generations(ctx: _Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    model = ctx.need_model()
    asked = ctx.need_cfg().checkpoint
    gens = meta["reference"]["generations"]
    if not isinstance(gens, list) or [g.get("prompt") for g in gens] != asked.reference_prompts:
        raise _Fail(f"meta.json records generations for other prompts than config.json's "
                    f"checkpoint.reference_prompts {asked.reference_prompts!r:.80}")
    warns, total = [], 0
    for g in gens:
        prompt, ids, tokens, margins = g["prompt"], g["prompt_ids"], g["tokens"], g["margins"]
        # The length check also bounds the work: a doctored meta.json cannot ask for a million tokens.
        if not (isinstance(ids, list) and isinstance(tokens, list) and isinstance(margins, list)
                and len(margins) == len(tokens) == asked.reference_tokens and all(type(t) is int for t in ids + tokens)
                and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in margins)):
            raise _Fail(f"reference generation for {prompt!r:.40} is malformed in meta.json (expected "
                        f"{asked.reference_tokens} tokens with one margin each)")
        if ctx.tokenizer is not None and ctx.tokenizer.encode(prompt) != ids:
            raise _Fail(f"prompt {prompt!r:.40} encodes to other ids than recorded: the tokenizer changed")
        replay, _ = greedy_with_margins(model, ids, len(tokens))
        total += len(tokens)
        diff = next((i for i, (a, b) in enumerate(zip(replay, tokens)) if a != b), None)
        if diff is None:
            continue
        if margins[diff] < MARGIN_TOLERANCE:
            warns.append(f"prompt {prompt!r:.40}: token {diff} differs ({replay[diff]} != recorded {tokens[diff]}) "
                         f"where the recorded margin {margins[diff]:.4f} < {MARGIN_TOLERANCE}; the remaining "
                         f"{len(tokens) - diff - 1} tokens were not compared")
            continue
        raise _Fail(f"prompt {prompt!r:.40}: token {diff} is {replay[diff]}, recorded {tokens[diff]} with margin "
                    f"{margins[diff]:.4f} >= {MARGIN_TOLERANCE}: the weights do not produce the recorded text")
    if warns:
        return WARN, "; ".join(warns)
    return PASS, f"{len(gens)} prompts, {total} greedy tokens replayed exactly"


@torch.no_grad()
def _check_logprobs(ctx: _Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    model = ctx.need_model()
    ref = meta["reference"]
    tensors = safetensors.torch.load_file(str(ctx.path / REFERENCE_FILE))
    batch, recorded = tensors["batch"], tensors["logprobs"]
    vocab = model.cfg.vocab_size
    p = batch.shape[-1] - 1
    if batch.dtype != torch.int64 or batch.dim() != 2 or batch.shape[0] != 1 or p != ref["positions"]:
        raise _Fail(f"{REFERENCE_FILE}: batch is {batch.dtype} {list(batch.shape)}, not int64 [1, P+1] with P = "
                    f"{ref['positions']!r:.20} positions as meta.json records")
    if not 1 <= p <= model.cfg.seq_len:
        raise _Fail(f"{REFERENCE_FILE}: {p} positions do not fit seq_len {model.cfg.seq_len}")
    if batch.min() < 0 or batch.max() >= vocab:
        raise _Fail(f"{REFERENCE_FILE}: batch token ids outside [0, {vocab})")
    if recorded.dtype != torch.float32 or list(recorded.shape) != [p, vocab]:
        raise _Fail(f"{REFERENCE_FILE}: logprobs are {recorded.dtype} {list(recorded.shape)}, not float32 {[p, vocab]}")
    x, y = batch[:, :-1], batch[:, 1:]
    with torch.autocast("cpu", enabled=False):
        _, loss = model(x, y)
        replayed = next_token_logprobs(model, x)[0]
    loss = float(loss)
    kl = float((recorded.exp() * (recorded - replayed)).sum(-1).mean())
    want = float(ref["loss"])
    d_loss = abs(loss - want)
    if not (d_loss <= LOSS_TOLERANCE and kl <= KL_TOLERANCE):  # also catches nan
        raise _Fail(f"replayed loss {loss:.6f} vs recorded {want:.6f} (|diff| {d_loss:.2e}, tolerance "
                    f"{LOSS_TOLERANCE:g}); mean KL(recorded || replayed) {kl:.2e} (tolerance {KL_TOLERANCE:g})")
    return PASS, f"{p} positions: |loss diff| {d_loss:.1e} <= {LOSS_TOLERANCE:g}, mean KL {kl:.1e} <= {KL_TOLERANCE:g}"


CHECKS: list[tuple[str, Callable[[_Ctx], tuple[str, str]]]] = [
    ("manifest", _check_manifest), ("config", _check_config), ("weights", _check_weights),
    ("tied_weights", _check_tied), ("tokenizer", _check_tokenizer), ("optimizer", _check_optimizer),
    ("scheduler", _check_scheduler), ("generations", _check_generations), ("logprobs", _check_logprobs),
]


# ---------------------------------------------------------------------------------------------- driver
def verify(path: str | Path, strict: bool = False) -> Report:
    """Run every check on one checkpoint directory. Never raises (but for KeyboardInterrupt).

    Args:
        path: a checkpoint directory (see `resolve_targets` for run directories).
        strict: a warning (a replayed token differing where the recorded margin was tiny) fails.
    """
    started = time.perf_counter()
    ctx = _Ctx(Path(path))
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
            except _Skip as e:
                status, detail = SKIP, str(e)
            except (_Fail, CheckpointError) as e:
                status, detail = FAIL, str(e)
            except (Exception, CheckpointException) as e:  # noqa: BLE001 - garbage raises anything; report it
                status, detail = FAIL, f"{type(e).__name__}: {_short(e)}"
            if strict and status == WARN:
                status, detail = FAIL, f"{detail} (--strict)"
            checks.append(Check(name, status, " ".join(detail.split())[:_DETAIL_CHARS * 2], time.perf_counter() - t0))
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
def _finite_range(t: torch.Tensor) -> tuple[bool, float]:
    """(every value finite, the minimum). One reduction, no tensor-sized temporary (NaN propagates into both)."""
    if t.numel() == 0:
        return True, 0.0
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low) and torch.isfinite(high)), float(low)


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
        raise _Fail(f"meta.json: {what} {value!r:.40} is not an integer")
    return value


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:_DETAIL_CHARS]


def _bare(key: str) -> str:
    return key.removeprefix(MODEL_PREFIX)


def _names(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(_bare(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _cap(problems: list[str], n: int = 4) -> str:
    return "; ".join(problems[:n]) + (f" (+{len(problems) - n} more)" if len(problems) > n else "")
