"""Recipe schema: frozen dataclasses per TOML section, loading, --set overrides and validation.

Every problem in a recipe is collected and reported together, naming the file and the key, so a
user fixes a recipe in one round. Nothing here imports torch or any other slmtrain module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slmtrain.errors import ConfigError

SCHEMA_VERSION = 1


def _f(default: Any, doc: str, *, choices: tuple[Any, ...] | None = None, lo: float | None = None,
       hi: float | None = None) -> Any:
    """A dataclass field carrying its documentation and allowed range."""
    kw: dict[str, Any] = {"metadata": {"doc": doc, "choices": choices, "lo": lo, "hi": hi}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), **kw)
    return field(default=default, **kw)


@dataclass(frozen=True)
class RunConfig:
    name: str = _f("", "Run name; the run directory is out_dir/name. Empty: the recipe file's stem.")
    out_dir: str = _f("runs", "Parent directory of run directories.")
    seed: int = _f(1337, "Seed for weights, data windows and sampling.", lo=0, hi=2**63 - 1)
    device: str = _f("auto", "Where to train.", choices=("auto", "cpu", "cuda", "mps"))
    precision: str = _f("fp32", "Autocast precision (fp16 adds a grad scaler). auto: bf16 where the hardware runs "
                        "it faster than fp32 (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32; the run "
                        "records its pick.",
                        choices=("fp32", "bf16", "fp16", "auto"))
    compile: bool = _f(False, "torch.compile the model.")
    deterministic: bool = _f(True, "Use deterministic kernels (exact resume needs it on GPU).")
    cpu_matmul: str = _f("auto", "Library of fp32 matmuls on CPU. auto: oneDNN on x86 CPUs with AVX-512 that are "
                         "not Intel's (MKL runs its AVX2 kernels there, half as fast), else the BLAS.",
                         choices=("auto", "blas", "onednn"))
    reuse_host_memory: bool = _f(True, "Keep freed host memory in the process for the next step (glibc's malloc "
                                 "thresholds) instead of page-faulting every large tensor in again; Linux only.")


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("builtin", "builtin | text | jsonl | parquet | hf:DATASET (e.g. hf:roneneldan/TinyStories).")
    train: str = _f("", "Training file or directory (text/jsonl/parquet sources). May use $VARS and ~.")
    valid: str = _f("", "Validation file. Empty: hold out valid_fraction of the training documents.")
    valid_fraction: float = _f(0.02, "Share of documents held out when no valid file is given.", lo=0.0, hi=0.5)
    text_key: str = _f("text", "Field holding the text in JSON/JSONL/Parquet/HF rows.")
    builtin_train_stories: int = _f(20000, "Stories generated for training (builtin source).", lo=1)
    builtin_valid_stories: int = _f(500, "Stories generated for validation, from a disjoint seed.", lo=1)
    max_documents: int = _f(0, "Use at most this many training documents (0: all).", lo=0)
    cache_dir: str = _f("", "Where prepared token files live. Empty: OUT_DIR/.data.")
    prepare_workers: int = _f(0, "Tokenizer processes: 0 or 1 tokenize in-process on one thread per core.",
                              lo=0, hi=256)
    loader_workers: int = _f(0, "DataLoader worker processes serving batches.", lo=0, hi=64)


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = _f("bpe", "bpe: train a byte-level BPE on the training split; gpt2: the GPT-2 BPE.",
                   choices=("bpe", "gpt2"))
    path: str = _f("gpt2", "For gpt2: a directory with vocab.json+merges.txt or tokenizer.json, or the hub name.")
    vocab_size: int = _f(4096, "Vocabulary size of a trained BPE (special tokens included).", lo=260, hi=65535)
    min_frequency: int = _f(2, "Merges seen fewer times are not learned (trained BPE).", lo=1)
    train_documents: int = _f(20000, "Documents used to train the BPE (0: all).", lo=0)


@dataclass(frozen=True)
class ModelConfig:
    flavour: str = _f("gpt2", "gpt2: learned positions, LayerNorm, GELU. llama: RoPE, RMSNorm, SwiGLU.",
                      choices=("gpt2", "llama"))
    n_layer: int = _f(4, "Transformer blocks.", lo=1, hi=256)
    n_head: int = _f(4, "Attention heads.", lo=1, hi=256)
    n_embd: int = _f(128, "Residual width; must be divisible by n_head.", lo=8, hi=65536)
    seq_len: int = _f(256, "Context length in tokens.", lo=8, hi=1 << 20)
    vocab_size: int = _f(0, "Embedding rows. 0: the tokenizer's size rounded up to a multiple of 64.", lo=0)
    mlp_ratio: float = _f(4.0, "MLP hidden width / n_embd (llama: SwiGLU width is 2/3 of that, rounded).",
                          lo=0.25, hi=64)
    dropout: float = _f(0.0, "Dropout probability in attention and MLP outputs.", lo=0.0, hi=0.9)
    bias: bool = _f(True, "Biases in Linear and LayerNorm layers (gpt2 flavour).")
    tie_embeddings: bool = _f(True, "Share the input embedding with the output projection.")
    rope_theta: float = _f(10000.0, "RoPE base (llama flavour).", lo=1.0)
    norm_eps: float = _f(1e-5, "Epsilon of LayerNorm / RMSNorm.", lo=0.0, hi=1.0)
    init_std: float = _f(0.02, "Std of the normal init; residual projections are scaled by 1/sqrt(2*n_layer).",
                         lo=0.0, hi=1.0)
    qk_norm: bool = _f(False, "RMSNorm over each head's queries and keys before attention (llama: Qwen3's layout).")
    relu2: bool = _f(False, "ReLU squared in the MLP in place of GELU (gpt2) or SiLU in the gate (llama).")
    zero_init: bool = _f(False, "Zero-initialise the residual projections (attention and MLP c_proj) and an untied head.")
    logit_softcap: float = _f(0.0, "Soft-cap the logits at this value, cap * tanh(logits / cap) (0: off).", lo=0.0)
    init_from: str = _f("", "Start from these weights instead of a random init: hf:DIR (a transformers model "
                            "directory) or a checkpoint / run directory. Empty: random init.")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adamw", "adamw: AdamW for every parameter. muon: Muon for the hidden matrices, AdamW for the rest.",
                   choices=("adamw", "muon"))
    lr: float = _f(1e-3, "Peak learning rate of AdamW (with muon: of norms, biases and the groups below left at 0).",
                   lo=0.0, hi=10.0)
    embed_lr: float = _f(0.0, "Peak learning rate of the token and position embeddings (0: optim.lr).", lo=0.0, hi=10.0)
    head_lr: float = _f(0.0, "Peak learning rate of an untied output head (0: optim.lr).", lo=0.0, hi=10.0)
    weight_decay: float = _f(0.1, "AdamW decay, applied to matrices only.", lo=0.0, hi=10.0)
    beta1: float = _f(0.9, "AdamW beta1.", lo=0.0, hi=0.999999)
    beta2: float = _f(0.95, "AdamW beta2.", lo=0.0, hi=0.999999)
    eps: float = _f(1e-8, "AdamW epsilon.", lo=0.0, hi=1.0)
    grad_clip: float = _f(1.0, "Clip the global grad norm to this (0: off).", lo=0.0)
    fused: str = _f("auto", "Fused AdamW kernel: auto (CUDA and CPU, where it is faster), on, off.",
                    choices=("auto", "on", "off"))
    muon_lr: float = _f(0.02, "Peak learning rate of Muon (hidden matrices; scaled by sqrt(max(1, rows/cols))).",
                        lo=0.0, hi=10.0)
    muon_momentum: float = _f(0.95, "Muon momentum after its warmup (Nesterov).", lo=0.0, hi=0.999999)
    muon_momentum_start: float = _f(0.85, "Muon momentum at step 0, raised linearly to muon_momentum.",
                                    lo=0.0, hi=0.999999)
    muon_momentum_warmup: int = _f(300, "Steps over which Muon's momentum rises from muon_momentum_start.", lo=0)
    muon_weight_decay: float = _f(0.0, "Decoupled weight decay of the Muon matrices.", lo=0.0, hi=10.0)
    muon_ns_steps: int = _f(5, "Newton-Schulz iterations that orthogonalise each Muon update.", lo=1, hi=99)


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = _f("cosine", "LR shape after warmup.", choices=("cosine", "linear", "constant", "wsd"))
    warmup_steps: int = _f(100, "Linear warmup from 0 to optim.lr.", lo=0)
    min_lr_ratio: float = _f(0.1, "Floor of the decay as a fraction of optim.lr.", lo=0.0, hi=1.0)
    decay_fraction: float = _f(0.2, "wsd: share of the steps spent decaying at the end.", lo=0.0, hi=1.0)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _f(32, "Sequences per micro-batch per process.", lo=1)
    grad_accum: int = _f(1, "Micro-batches per optimizer step.", lo=1)
    max_steps: int = _f(1000, "Optimizer steps; also the schedule's length (0: derive from max_tokens).", lo=0)
    max_tokens: int = _f(0, "Stop after this many training tokens (0: no limit).", lo=0)
    max_minutes: float = _f(0.0, "Time budget in minutes: the step count is fitted so the schedule ends inside it "
                                 "(0: no budget).", lo=0.0)
    fit_budget: bool = _f(True, "Fit the step count (and the schedule) to max_minutes; false: the schedule follows "
                                "max_steps and the budget merely stops the run.")
    budget_overrun: float = _f(0.015, "Share of the budget a run may exceed (e.g. the machine slowed down) before "
                               "it stops short of its fitted step count.", lo=0.0, hi=10.0)
    budget_probe_steps: int = _f(20, "Steps at the start of a budgeted run before its step count is fixed (the "
                                 "first 4 of an attempt are not timed).", lo=2, hi=10000)
    skip_nonfinite: int = _f(5, "Consecutive non-finite steps tolerated (skipped) before the run fails.", lo=0)
    fused_head_loss: bool = _f(False, "Training steps compute the output head and the loss chunk by chunk, gradients "
                                      "included, never holding the whole (tokens x vocab) logits and their gradient.")


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = _f(100, "Evaluate every N steps (and at the end; 0: only at the end).", lo=0)
    batches: int = _f(20, "Validation batches per evaluation.", lo=1)
    batch_size: int = _f(0, "Validation batch size (0: train.batch_size).", lo=0)
    samples: int = _f(1, "Generations written to samples.jsonl at each evaluation.", lo=0, hi=64)
    sample_tokens: int = _f(120, "Tokens generated per sample.", lo=1)
    prompts: list[str] = _f(["Once upon a time"], "Prompts for the samples (cycled).")
    temperature: float = _f(0.8, "Sampling temperature for samples (0: greedy).", lo=0.0, hi=10.0)
    top_k: int = _f(40, "Top-k for samples (0: off).", lo=0)


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = _f(0, "Save every N steps (0: off).", lo=0)
    every_minutes: float = _f(0.0, "Save every N minutes of wall time (0: off).", lo=0.0)
    keep_last: int = _f(3, "Committed checkpoints kept (plus the best by validation loss).", lo=1)
    keep_best: bool = _f(True, "Also keep the checkpoint with the lowest validation loss.")
    async_save: bool = _f(False, "Copy state off the training path and write it in the background.")
    grace_seconds: float = _f(30.0, "Budget from a preemption signal to a durable checkpoint.", lo=0.0)
    on_error: str = _f("stop", "A failed save: stop (exit 1) or continue (retry at the next interval).",
                       choices=("stop", "continue"))
    reference_prompts: list[str] = _f(["Once upon a time", "The little dog"],
                                      "Prompts whose greedy continuations are recorded for verify.")
    reference_tokens: int = _f(24, "Greedy tokens recorded per reference prompt.", lo=1, hi=4096)
    notice_file: str = _f("", "Preempt when this file appears (cloud preemption notices).")
    notice_url: str = _f("", "Preempt when this URL answers 200 with a non-empty body.")
    notice_interval: float = _f(5.0, "Seconds between notice polls.", lo=0.05)


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = _f(10, "Write a train line to metrics.jsonl every N steps.", lo=1)
    progress: bool = _f(True, "Show the live progress line on the console.")
    curves: bool = _f(True, "Redraw RUN_DIR/curves.png after every evaluation (in the background).")
    tensorboard: bool = _f(False, "Also write TensorBoard event files to RUN_DIR/tensorboard (needs tensorboard).")


@dataclass(frozen=True)
class ParallelConfig:
    strategy: str = _f("ddp", "Multi-process wrapping under torchrun.", choices=("ddp", "fsdp"))
    backend: str = _f("auto", "Process-group backend (auto: nccl on CUDA, else gloo).",
                      choices=("auto", "nccl", "gloo"))
    timeout_seconds: float = _f(300.0, "A collective waiting longer than this for a dead or stuck rank fails the "
                                       "job (torch's default is 30 minutes).", lo=1.0)


@dataclass(frozen=True)
class HealthConfig:
    rollback: bool = _f(True, "On a loss spike, or more than train.skip_nonfinite non-finite steps in a row, reload "
                              "the last good checkpoint, skip the data since, lower the LR for a while, go on.")
    window: int = _f(50, "Recent normal losses a step's loss is compared with.", lo=5, hi=100000)
    spike_sigma: float = _f(6.0, "A loss is high above mean + spike_sigma x std of the window ...", lo=0.0)
    spike_ratio: float = _f(1.2, "... and above spike_ratio x its mean.", lo=1.0)
    patience: int = _f(3, "High losses in a row that make a spike.", lo=1)
    max_rollbacks: int = _f(3, "Rollbacks before the run fails with advice.", lo=0)
    lr_scale: float = _f(0.5, "LR multiplier after a rollback ...", lo=0.0, hi=1.0)
    lr_scale_steps: int = _f(100, "... for this many steps.", lo=0)
    fault_lr_step: int = _f(0, "Fault injection, to test the rollback path: from this step (0: off), until the "
                               "first rollback, the LR is multiplied by fault_lr_factor for fault_lr_steps steps.", lo=0)
    fault_lr_factor: float = _f(100.0, "LR multiplier of the injected fault.", lo=0.0)
    fault_lr_steps: int = _f(5, "Steps the injected fault lasts.", lo=1)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **values: Any) -> Config:
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]

# Keys that may differ between a checkpoint's recipe and the one a resume uses: they change when
# or how a run reports and saves, never the numbers it computes.
RESUME_SAFE_KEYS = frozenset({
    "run.name", "run.out_dir", "data.loader_workers", "data.prepare_workers", "data.cache_dir",
    "train.max_steps", "train.max_tokens", "train.max_minutes", "train.budget_probe_steps", "train.budget_overrun", "train.fit_budget",
    "train.skip_nonfinite",
    "log.every_steps", "log.progress", "log.curves", "log.tensorboard", "parallel.timeout_seconds",
    "eval.every_steps", "eval.batches", "eval.samples", "eval.sample_tokens", "eval.prompts",
    "eval.temperature", "eval.top_k",
    "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.keep_last", "checkpoint.keep_best",
    "checkpoint.async_save", "checkpoint.grace_seconds", "checkpoint.on_error", "checkpoint.notice_file",
    "checkpoint.notice_url", "checkpoint.notice_interval",
})


def embedding_rows(requested: int, tokenizer_size: int) -> int:
    """model.vocab_size as resolved: as requested, or (0) the tokenizer's size rounded up to a multiple of 64."""
    return requested or 64 * math.ceil(tokenizer_size / 64)


def _type_name(t: Any) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "list[str]": "a list of strings"}.get(str(t), str(t))


def _coerce(value: Any, ftype: str) -> Any:
    """Return `value` as `ftype`, or raise TypeError. TOML types are strict; ints widen to floats."""
    if ftype == "bool":
        if isinstance(value, bool):
            return value
    elif ftype == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ftype == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ftype == "str":
        if isinstance(value, str):
            return value
    elif ftype == "list[str]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise TypeError


def _check_field(where: str, f: dataclasses.Field, value: Any, problems: list[str]) -> Any:
    try:
        value = _coerce(value, str(f.type))
    except TypeError:
        problems.append(f"{where}: expected {_type_name(f.type)}, got {value!r} ({type(value).__name__})")
        return None
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where}: must be a finite number, got {value!r}")
    elif meta["choices"] is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        problems.append(f"{where}: {value!r} is not one of {allowed}")
    elif meta["lo"] is not None and isinstance(value, (int, float)) and value < meta["lo"]:
        problems.append(f"{where}: {value!r} is below the minimum {meta['lo']}")
    elif meta["hi"] is not None and isinstance(value, (int, float)) and value > meta["hi"]:
        problems.append(f"{where}: {value!r} is above the maximum {meta['hi']}")
    return value


def _unknown(where: str, key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (valid keys: {', '.join(valid)})"
    return f"{where}: unknown key {key!r}{hint}"


def from_dict(raw: Any, origin: str = "recipe") -> Config:
    """Build a validated Config from nested TOML-like data, collecting every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a table of sections, got {type(raw).__name__}")
    built: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in SECTIONS:
            problems.append(_unknown(origin, str(section), list(SECTIONS)))
            continue
        if not isinstance(value, dict):
            problems.append(f"{origin}: [{section}] must be a table, got {value!r}")
            continue
        cls = SECTIONS[section]
        by_name = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, v in value.items():
            where = f"{origin}: {section}.{key}"
            if key not in by_name:
                problems.append(_unknown(f"{origin}: [{section}]", str(key), list(by_name)))
                continue
            checked = _check_field(where, by_name[key], v, problems)
            if checked is not None:
                kwargs[key] = checked
        built[section] = cls(**kwargs)
    cfg = Config(**built)
    problems.extend(f"{origin}: {p}" for p in _cross_checks(cfg))
    if problems:
        raise ConfigError(_format(problems))
    return cfg


def _cross_checks(cfg: Config) -> list[str]:
    p: list[str] = []
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.n_head < 1:
        pass  # reported by the field check; nothing below can divide by it
    elif m.n_embd % m.n_head:
        p.append(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    elif m.flavour == "llama" and (m.n_embd // m.n_head) % 2:
        p.append(f"model.n_embd / model.n_head ({m.n_embd // m.n_head}) must be even for RoPE (llama flavour)")
    if t.max_steps == 0 and t.max_tokens == 0 and not (t.max_minutes and t.fit_budget):
        p.append("train.max_steps, train.max_tokens and train.max_minutes are all 0: set one so the schedule knows "
                 "its length")
    s = cfg.schedule
    if t.max_minutes and t.fit_budget and s.kind != "constant" and s.warmup_steps <= t.budget_probe_steps:
        # The step count is fixed after the probe; only warmup LRs do not depend on it, so a run given that
        # count as max_steps takes exactly the same steps.
        p.append(f"train.max_minutes needs schedule.warmup_steps ({s.warmup_steps}) above train.budget_probe_steps "
                 f"({t.budget_probe_steps}): the step time is measured during warmup, before the step count is fixed")
    if cfg.optim.name == "muon" and cfg.parallel.strategy == "fsdp":
        p.append("optim.name = 'muon' does not run under parallel.strategy = 'fsdp' (Muon orthogonalises whole "
                 "matrices, FSDP2 shards them): use parallel.strategy = 'ddp' or optim.name = 'adamw'")
    if d.source in ("text", "jsonl", "parquet") and not d.train:
        p.append(f"data.train is empty: data.source = {d.source!r} needs a training file")
    if d.source not in ("builtin", "text", "jsonl", "parquet") and not d.source.startswith("hf:"):
        p.append(f"data.source: {d.source!r} is not builtin, text, jsonl, parquet or hf:DATASET")
    if not cfg.eval.prompts:
        p.append("eval.prompts is empty: give at least one prompt")
    if not cfg.checkpoint.reference_prompts:
        p.append("checkpoint.reference_prompts is empty: give at least one prompt")
    return p


def _format(problems: list[str]) -> str:
    head = "invalid recipe" if len(problems) == 1 else f"invalid recipe ({len(problems)} problems)"
    return f"{head}: " + "; ".join(problems) + ". Fix the recipe or the --set value and run again."


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as TOML, or taken as a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set train.max_steps=200")
    lhs, rhs = text.split("=", 1)
    section, key = (s.strip() for s in lhs.split(".", 1))
    try:
        value = tomllib.loads(f"v = {rhs}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs
    return section, key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with every `section.key=value` applied (validation happens later)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"--set {text!r}: [{section}] is not a table in the recipe")
        sec[key] = value
    return out


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML recipe, apply --set overrides, validate, and fill run.name from the file name."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe {str(path)!r} does not exist: pass the path to a .toml recipe, "
                          f"e.g. recipes/quickstart.toml") from None
    except IsADirectoryError:
        raise ConfigError(f"recipe {str(path)!r} is a directory, not a .toml file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"recipe {str(path)!r} is not valid UTF-8 (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"recipe {str(path)!r} cannot be read: {e.strerror}") from None
    return loads(text, origin=str(path), overrides=overrides, default_name=path.stem)


def loads(text: str, origin: str = "recipe", overrides: list[str] | None = None,
          default_name: str = "run") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin} is not valid TOML: {e}. Fix the syntax and run again.") from None
    raw = apply_overrides(raw, overrides or [])
    cfg = from_dict(raw, origin)
    if not cfg.run.name:
        cfg = cfg.replace("run", name=default_name)
    return cfg


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


def _toml_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04x}"
    return c


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_toml_char(c) for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The fully resolved recipe as TOML; `loads(to_toml(c)) == c`."""
    lines = [f"# Resolved slmtrain recipe (schema {SCHEMA_VERSION}); resume reads this file."]
    for section, values in cfg.to_dict().items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def reference() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every recipe key: the README's recipe reference."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            rows.append((f"{section}.{f.name}", str(f.type), default, f.metadata["doc"]))
    return rows
