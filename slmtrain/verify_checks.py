"""The checks of `slmtrain verify` on a checkpoint's files and model, and what they share.

Each check takes the `Ctx` that earlier checks filled and returns (status, detail); it raises `Fail`
when it finds a problem and `Skip` when a check it needs failed. The order and the driver are in
`slmtrain.verify`, which documents what each check proves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from slmtrain import config as config_mod
from slmtrain.ckptload import (
    CONFIG_FILE,
    MODEL_PREFIX,
    TOKENIZER_FILE,
    build_model,
    load_weights,
    read_config,
    read_dcp_metadata,
    tensor_entries,
)
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.errors import UserError
from slmtrain.generate import greedy_with_margins, next_token_logprobs
from slmtrain.manifest import META_FILE, MODEL_DIR, verify_manifest
from slmtrain.model import GPT
from slmtrain.reference import KL_TOLERANCE, LOSS_TOLERANCE, MARGIN_TOLERANCE

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
REFERENCE_FILE = "reference.safetensors"


class Fail(Exception):
    """The check found a problem; the message says which."""


class Skip(Exception):
    """The check cannot run because an earlier one failed."""


@dataclass
class Ctx:
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
            raise Skip(f"needs meta.json ({self.meta_problem})")
        return self.meta

    def need_cfg(self) -> config_mod.Config:
        if self.cfg is None or self.skeleton is None:
            raise Skip("needs a valid config.json (see config)")
        return self.cfg

    def need_model(self) -> GPT:
        if self.model is None:
            raise Skip("needs the loaded weights (see weights)")
        return self.model


# ------------------------------------------------------------------------------------------------ checks
def check_manifest(ctx: Ctx) -> tuple[str, str]:
    problems = verify_manifest(ctx.path)
    if problems:
        raise Fail(cap(problems, 6))
    files = ctx.need_meta()["files"]
    return PASS, f"{len(files)} files, sizes and sha256 match, no stray files"


def check_config(ctx: Ctx) -> tuple[str, str]:
    raw, cfg = read_config(ctx.path)
    dtype = raw.get("dtype", "float32")
    if dtype != "float32":
        raise Fail(f"config.json: dtype {dtype!r:.40} unsupported (checkpoints store float32 weights)")
    try:
        with torch.device("meta"):
            skeleton = GPT(cfg.model)
    except ValueError as e:
        raise Fail(f"config.json: the model config does not build: {e}") from None
    ctx.raw_config, ctx.cfg, ctx.skeleton = raw, cfg, skeleton
    m = cfg.model
    return PASS, (f"recipe valid; {m.flavour} {m.n_layer}L {m.n_head}H {m.n_embd}d ctx {m.seq_len} vocab "
                  f"{m.vocab_size}, {skeleton.num_params():,} parameters")


def check_weights(ctx: Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    assert ctx.skeleton is not None
    found = tensor_entries(read_dcp_metadata(ctx.path / MODEL_DIR))
    ctx.model_keys = found
    expected = {MODEL_PREFIX + k: tuple(v.shape) for k, v in ctx.skeleton.state_dict().items()}
    problems = []
    if missing := [k for k in expected if k not in found]:
        problems.append(f"missing {key_names(missing)}")
    if unexpected := [k for k in found if k not in expected]:
        problems.append(f"unexpected {key_names(unexpected)}")
    shapes = [f"{_bare(k)} {list(found[k][0])} != {list(shape)}" for k, shape in expected.items()
              if found.get(k) is not None and found[k][0] != shape]
    if shapes:
        problems.append(f"shape mismatch (file != config.json): {', '.join(shapes[:3])}"
                        + (f" (+{len(shapes) - 3} more)" if len(shapes) > 3 else ""))
    if problems:
        raise Fail(f"model/ does not match config.json's model: {'; '.join(problems)}")
    bad = {k: v[1] for k, v in found.items() if v is not None and v[1] != torch.float32}
    if bad:
        dtypes = sorted({str(d).removeprefix("torch.") for d in bad.values()})
        raise Fail(f"weights stored as {'/'.join(dtypes)} ({len(bad)} of {len(found)} tensors, e.g. "
                   f"{_bare(next(iter(bad)))}), but config.json says float32")
    model = build_model(cfg.model, "cpu")
    load_weights(ctx.path, model)
    nonfinite = [k for k, v in model.state_dict().items() if not finite_range(v)[0]]
    if nonfinite:
        raise Fail(f"non-finite values (nan/inf) in {key_names(nonfinite)}")
    ctx.model = model.eval()
    return PASS, f"{len(found)} tensors, {model.num_params():,} parameters, float32, strict load, all finite"


def check_tied(ctx: Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    if ctx.model_keys is None:
        raise Skip("needs model/ metadata (see weights)")
    head, wte = MODEL_PREFIX + "lm_head.weight", MODEL_PREFIX + "wte.weight"
    if cfg.model.tie_embeddings:
        if head in ctx.model_keys:
            raise Fail("config.json says tie_embeddings = true but model/ holds a separate output matrix "
                       "lm_head.weight: the tie was broken")
        if ctx.model is not None and ctx.model.output_weight is not ctx.model.wte.weight:
            raise Fail("the rebuilt model's output projection is not wte.weight")
        return PASS, "output projection is wte.weight, stored once"
    if head not in ctx.model_keys or wte not in ctx.model_keys:
        raise Fail(f"config.json says tie_embeddings = false but model/ lacks "
                   f"{key_names([k for k in (wte, head) if k not in ctx.model_keys])}")
    m = ctx.model
    if m is not None and m.output_weight.data_ptr() == m.wte.weight.data_ptr():
        raise Fail("untied model, but lm_head.weight and wte.weight share storage after load")
    return PASS, "untied: wte.weight and lm_head.weight stored separately"


def check_tokenizer(ctx: Ctx) -> tuple[str, str]:
    cfg = ctx.need_cfg()
    try:
        tok = Tokenizer.from_file(ctx.path / TOKENIZER_FILE)
    except UserError as e:
        raise Fail(str(e)) from None
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
        raise Fail("; ".join(problems))
    ctx.tokenizer = tok
    return PASS, f"fingerprint {fp[:12]}... matches config.json and meta.json; {tok.vocab_size} tokens <= {vocab} rows"



def check_generations(ctx: Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    model = ctx.need_model()
    asked = ctx.need_cfg().checkpoint
    gens = meta["reference"]["generations"]
    if not isinstance(gens, list) or [g.get("prompt") for g in gens] != asked.reference_prompts:
        raise Fail(f"meta.json records generations for other prompts than config.json's "
                   f"checkpoint.reference_prompts {asked.reference_prompts!r:.80}")
    warns, total = [], 0
    for g in gens:
        prompt, ids, tokens, margins = g["prompt"], g["prompt_ids"], g["tokens"], g["margins"]
        # The length check also bounds the work: a doctored meta.json cannot ask for a million tokens.
        if not (isinstance(ids, list) and isinstance(tokens, list) and isinstance(margins, list)
                and len(margins) == len(tokens) == asked.reference_tokens and all(type(t) is int for t in ids + tokens)
                and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in margins)):
            raise Fail(f"reference generation for {prompt!r:.40} is malformed in meta.json (expected "
                       f"{asked.reference_tokens} tokens with one margin each)")
        if ctx.tokenizer is not None and ctx.tokenizer.encode(prompt) != ids:
            raise Fail(f"prompt {prompt!r:.40} encodes to other ids than recorded: the tokenizer changed")
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
        raise Fail(f"prompt {prompt!r:.40}: token {diff} is {replay[diff]}, recorded {tokens[diff]} with margin "
                   f"{margins[diff]:.4f} >= {MARGIN_TOLERANCE}: the weights do not produce the recorded text")
    if warns:
        return WARN, "; ".join(warns)
    return PASS, f"{len(gens)} prompts, {total} greedy tokens replayed exactly"


@torch.no_grad()
def check_logprobs(ctx: Ctx) -> tuple[str, str]:
    meta = ctx.need_meta()
    model = ctx.need_model()
    ref = meta["reference"]
    tensors = safetensors.torch.load_file(str(ctx.path / REFERENCE_FILE))
    batch, recorded = tensors["batch"], tensors["logprobs"]
    vocab = model.cfg.vocab_size
    p = batch.shape[-1] - 1
    if batch.dtype != torch.int64 or batch.dim() != 2 or batch.shape[0] != 1 or p != ref["positions"]:
        raise Fail(f"{REFERENCE_FILE}: batch is {batch.dtype} {list(batch.shape)}, not int64 [1, P+1] with P = "
                   f"{ref['positions']!r:.20} positions as meta.json records")
    if not 1 <= p <= model.cfg.seq_len:
        raise Fail(f"{REFERENCE_FILE}: {p} positions do not fit seq_len {model.cfg.seq_len}")
    if batch.min() < 0 or batch.max() >= vocab:
        raise Fail(f"{REFERENCE_FILE}: batch token ids outside [0, {vocab})")
    if recorded.dtype != torch.float32 or list(recorded.shape) != [p, vocab]:
        raise Fail(f"{REFERENCE_FILE}: logprobs are {recorded.dtype} {list(recorded.shape)}, not float32 {[p, vocab]}")
    x, y = batch[:, :-1], batch[:, 1:]
    with torch.autocast("cpu", enabled=False):
        _, loss = model(x, y)
        replayed = next_token_logprobs(model, x)[0]
    loss = float(loss)
    kl = float((recorded.exp() * (recorded - replayed)).sum(-1).mean())
    want = float(ref["loss"])
    d_loss = abs(loss - want)
    if not (d_loss <= LOSS_TOLERANCE and kl <= KL_TOLERANCE):  # also catches nan
        raise Fail(f"replayed loss {loss:.6f} vs recorded {want:.6f} (|diff| {d_loss:.2e}, tolerance "
                   f"{LOSS_TOLERANCE:g}); mean KL(recorded || replayed) {kl:.2e} (tolerance {KL_TOLERANCE:g})")
    return PASS, f"{p} positions: |loss diff| {d_loss:.1e} <= {LOSS_TOLERANCE:g}, mean KL {kl:.1e} <= {KL_TOLERANCE:g}"


# ----------------------------------------------------------------------------------------------- helpers
def finite_range(t: torch.Tensor) -> tuple[bool, float]:
    """(every value finite, the minimum). One reduction, no tensor-sized temporary (NaN propagates into both)."""
    if t.numel() == 0:
        return True, 0.0
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low) and torch.isfinite(high)), float(low)


def _bare(key: str) -> str:
    return key.removeprefix(MODEL_PREFIX)


def key_names(keys: list[str], n: int = 4) -> str:
    """The first `n` DCP keys without the model prefix, and how many more there are."""
    shown = ", ".join(_bare(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def cap(problems: list[str], n: int = 4) -> str:
    """The first `n` problems joined with "; ", and how many more there are."""
    return "; ".join(problems[:n]) + (f" (+{len(problems) - n} more)" if len(problems) > n else "")
