"""`slmtrain export`: a checkpoint as a Hugging Face model directory or as bare safetensors, and back
(`model.init_from`).

hf writes what `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load
offline: config.json, model.safetensors (a tied matrix stored once, as transformers saves it),
generation_config.json, tokenizer.json + tokenizer_config.json + special_tokens_map.json, and a README.md
model card. safetensors writes model.safetensors in our own names plus our config.json. Both are built in
a temporary directory beside OUT_DIR and renamed into place: OUT_DIR is whole or absent.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import slmtrain.fsio as fsio
import slmtrain.hflayout as hflayout
from slmtrain.checkpoint import read_meta
from slmtrain.ckptload import load_model, resolve_checkpoint
from slmtrain.config import Config
from slmtrain.data.tokenizer import EOS_TOKEN, Tokenizer
from slmtrain.errors import UserError
from slmtrain.log import read_jsonl
from slmtrain.model import GPT

FORMATS = ("hf", "safetensors")
TINYSTORIES_LICENSE = "cdla-sharing-1.0"  # the TinyStories dataset's license (roneneldan/TinyStories)


def export(path: str | Path, out_dir: str | Path, fmt: str = "hf", log: Any = lambda _m: None) -> Path:
    """Export the checkpoint at `path` (or a run directory's newest sound one) to `out_dir`; returns it.

    Raises:
        UserError: an unknown format, `out_dir` exists and is not empty, or (hf) the model has an option
            no standard transformers class computes.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty directory: choose a new output directory")
    ckpt = resolve_checkpoint(path, log)
    model, cfg, tok = load_model(ckpt)
    if fmt == "hf":
        hflayout.hf_config(cfg.model, tok.eos_id)  # refuse before writing anything
    files = _hf_files(ckpt, model, cfg, tok) if fmt == "hf" else _safetensors_files(ckpt, model)
    _write_dir(out, files)
    log(f"exported {ckpt} to {out} ({fmt}: {', '.join(sorted(files))})")
    return out


def _write_dir(out: Path, files: dict[str, bytes]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
        fsio.fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _safetensors_files(ckpt: Path, model: GPT) -> dict[str, bytes]:
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    return {"model.safetensors": safetensors.torch.save(sd, metadata={"format": "pt", "source": "slmtrain"}),
            "config.json": (ckpt / "config.json").read_bytes()}


def _hf_files(ckpt: Path, model: GPT, cfg: Config, tok: Tokenizer) -> dict[str, bytes]:
    mcfg = cfg.model
    weights = hflayout.to_hf(model.state_dict(), mcfg)
    if mcfg.tie_embeddings:
        weights.pop("lm_head.weight", None)  # transformers ties lm_head to the input embedding itself
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": mcfg.seq_len,
                  "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
                  "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}
    gen = {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id,
           "max_length": mcfg.seq_len, "do_sample": False}
    return {
        "config.json": fsio.dumps_json(hflayout.hf_config(mcfg, tok.eos_id)),
        "model.safetensors": safetensors.torch.save(weights, metadata={"format": "pt"}),
        "generation_config.json": fsio.dumps_json(gen),
        "tokenizer.json": tok.to_json().encode("utf-8"),
        "tokenizer_config.json": fsio.dumps_json(tok_config),
        "special_tokens_map.json": fsio.dumps_json({k: EOS_TOKEN for k in ("bos_token", "eos_token", "unk_token",
                                                                           "pad_token")}),
        "README.md": model_card(ckpt, model, cfg).encode("utf-8"),
    }


def model_card(ckpt: Path, model: GPT, cfg: Config) -> str:
    """README.md of an exported model: what it is, what it was trained on, how well it does, the recipe."""
    meta = read_meta(ckpt)
    run_dir = ckpt.parent.parent
    records = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    evals = [r for r in records if r.get("kind") == "eval" and r.get("step", 0) <= meta["step"]]
    samples = read_jsonl(run_dir / "samples.jsonl") if (run_dir / "samples.jsonl").exists() else []
    sample = next((s["text"] for s in reversed(samples) if s.get("step", 0) <= meta["step"]), None)
    m, d = cfg.model, cfg.data
    arch = hflayout.architecture(m)
    tinystories = "tinystories" in f"{d.source} {d.train}".lower()
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if tinystories:
        lines += [f"license: {TINYSTORIES_LICENSE}", "datasets:", "- roneneldan/TinyStories"]
    lines += ["tags:", "- slmtrain", "---", "", f"# {cfg.run.name}", "",
              f"A {model.param_summary()} {arch} pretrained from scratch with slmtrain "
              f"({m.flavour} flavour: {m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, context {m.seq_len}, "
              f"vocabulary {m.vocab_size}{', QK-norm' if m.qk_norm else ''}{', ReLU²' if m.relu2 else ''}"
              f"{', untied head' if not m.tie_embeddings else ''}).", "",
              "## Training", "",
              f"- data: `{d.source}` {d.train or ''}".rstrip(),
              f"- tokenizer: {cfg.tokenizer.kind} ({'trained on the training split, ' if cfg.tokenizer.kind == 'bpe' else ''}"
              f"{m.vocab_size} embedding rows)",
              f"- optimizer: {cfg.optim.name}, schedule {cfg.schedule.kind}, {meta['step']:,} steps, "
              f"{meta['tokens']:,} tokens seen", ""]
    if evals:
        e = evals[-1]
        lines += ["## Evaluation (validation split)", "", "| step | loss (nats/token) | perplexity | bits per byte |",
                  "|---|---|---|---|", f"| {e['step']} | {e['val_loss']:.4f} | "
                  f"{math.exp(min(e['val_loss'], 50)):.3f} | {e['val_bpb']:.4f} |", ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
              'ids = tok("Once upon a time", return_tensors="pt").input_ids',
              "print(tok.decode(model.generate(ids, max_new_tokens=100, do_sample=True, top_k=40)[0]))", "```", ""]
    if sample:
        lines += ["## Sample", "", "> " + sample.replace("\n", "\n> "), ""]
    from slmtrain.config import to_toml

    lines += ["## Recipe", "", "```toml", to_toml(cfg).strip(), "```", ""]
    if tinystories:
        lines += ["The TinyStories dataset (Eldan & Li, 2023) is licensed under CDLA-Sharing-1.0.", ""]
    return "\n".join(lines)


def load_init_weights(source: str, model: GPT, eos_id: int) -> None:
    """Load `model.init_from` into `model`: "hf:DIR" (a transformers model directory) or a checkpoint path.

    Raises:
        UserError: the source is missing, unreadable, or does not fit the model (shapes or architecture).
    """
    cfg = model.cfg
    ours = model.state_dict()
    if source.startswith("hf:"):
        directory = Path(os.path.expanduser(source[3:]))
        files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
        if not files or not (directory / "config.json").is_file():
            raise UserError(f"model.init_from = {source!r}: {directory} holds no config.json and *.safetensors "
                            f"(a directory written by `slmtrain export --format hf` or `save_pretrained`)")
        hflayout.check_hf_config(fsio.read_json(directory / "config.json"), cfg, eos_id, source)
        hf: dict[str, torch.Tensor] = {}
        for f in files:
            hf.update(safetensors.torch.load_file(f))
        state = hflayout.from_hf(hf, cfg, ours, source)
    else:
        ckpt = resolve_checkpoint(source, lambda _m: None)
        src, _, _ = load_model(ckpt)
        state = src.state_dict()
        wrong = [f"{k} {list(v.shape)} != {list(ours[k].shape)}" for k, v in state.items()
                 if k in ours and v.shape != ours[k].shape]
        if wrong or state.keys() != ours.keys():
            raise UserError(f"model.init_from = {source!r} does not fit this recipe's model "
                            f"({'; '.join(wrong[:3]) or 'different parameters'}): make [model] match it")
    with torch.no_grad():
        model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)
