"""Measure a checkpoint: loss, perplexity and bits per byte on a run's validation split or on a file.

The model, recipe and tokenizer come from the checkpoint alone (`slmtrain.ckptload`). Evaluation walks a
token stream in consecutive, non-overlapping windows of `seq_len + 1` tokens (each predicts `seq_len`
targets), from the start of the stream, in fp32 without autocast. The windows are a pure function of the
stream, so two checkpoints evaluated on the same data see the same tokens. Bits per byte use the
tokens-per-byte ratio of the whole stream (EOS counted as one byte per document, as in data preparation),
so they compare across tokenizers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmtrain import config as config_mod
from slmtrain.ckptload import load_model
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.errors import CheckpointError, DataError, UserError
from slmtrain.model import GPT
from slmtrain.train import bits_per_byte, perplexity

_DATA_KINDS = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class EvalResult:
    """Mean next-token loss (nats per token) over `tokens` targets in `windows` windows, and derived figures."""

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    windows: int
    tokens_per_byte: float
    data: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows(tokens: np.ndarray, seq_len: int) -> tuple[int, int]:
    """(count, targets per window): consecutive windows of seq_len+1 tokens, or one shorter one for a short stream."""
    n = int(tokens.shape[0])
    if n < 2:
        raise DataError(f"the evaluation data holds {n} token(s): at least 2 are needed (one input, one target)")
    if n >= seq_len + 1:
        return (n - 1) // seq_len, seq_len
    return 1, n - 1


def batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int = 0) -> Iterator[torch.Tensor]:
    """(B, T+1) int64 windows of `tokens`, in order; at most `max_batches` batches (0: every window)."""
    count, t = _windows(tokens, seq_len)
    if max_batches:
        count = min(count, max_batches * batch_size)
    for start in range(0, count, batch_size):
        rows = [np.asarray(tokens[i * t: i * t + t + 1], dtype=np.int64)
                for i in range(start, min(count, start + batch_size))]
        yield torch.from_numpy(np.stack(rows))


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int, max_batches: int = 0) -> tuple[float, int, int]:
    """(mean loss in nats per target, targets, windows) of `model` over `tokens`, fp32, eval mode."""
    device = model.wte.weight.device
    was_training = model.training
    model.eval()
    total, targets, windows = 0.0, 0, 0
    try:
        for batch in batches(tokens, model.cfg.seq_len, batch_size, max_batches):
            batch = batch.to(device)
            _, loss = model(batch[:, :-1], batch[:, 1:])
            n = batch[:, 1:].numel()
            total += float(loss.double()) * n
            targets += n
            windows += batch.shape[0]
    finally:
        model.train(was_training)
    return total / targets, targets, windows


def tokenize_documents(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, int]:
    """One token stream (EOS after each document) and its byte count (UTF-8 bytes + 1 per EOS, as prepare counts)."""
    ids = tok.encode_batch(docs)
    flat = np.fromiter((t for doc in ids for t in (*doc, tok.eos_id)), dtype=np.int64,
                       count=sum(len(d) + 1 for d in ids))
    return flat, sum(len(d.encode("utf-8")) for d in docs) + len(docs)


def data_config(spec: str, text_key: str) -> config_mod.DataConfig:
    """A `[data]` section reading `spec` (a .txt/.jsonl/.json/.parquet file or directory, or hf:NAME) as validation.

    Raises:
        UserError: the kind of `spec` cannot be told from its name, or it does not exist.
    """
    if spec.startswith("hf:"):
        return config_mod.DataConfig(source=spec, text_key=text_key)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--data {spec!r} does not exist: pass a .txt (stories separated by <|endoftext|>), .jsonl, "
                        f".json or .parquet file or directory, or hf:DATASET")
    kinds = {_DATA_KINDS[p.suffix.lower()] for p in ([path] if path.is_file() else path.rglob("*"))
             if p.suffix.lower() in _DATA_KINDS}
    if len(kinds) != 1:
        found = "no" if not kinds else "mixed (" + ", ".join(sorted(kinds)) + ")"
        raise UserError(f"--data {spec!r}: {found} .txt/.jsonl/.json/.parquet files; pass one kind of file")
    return config_mod.DataConfig(source=kinds.pop(), train=str(path), valid=str(path), text_key=text_key)


def _split_tokens(cfg: config_mod.Config, tok: Tokenizer, log: Callable[[str], None]) -> tuple[np.ndarray, float, str]:
    from slmtrain.data.prepare import open_tokens, prepare_data

    prepared = prepare_data(cfg, log=log)
    if prepared.tokenizer.fingerprint != tok.fingerprint:
        raise CheckpointError(f"the validation data prepared from the checkpoint's recipe ({prepared.dir}) uses "
                              f"another tokenizer than the checkpoint's tokenizer.json; pass --data FILE to evaluate "
                              f"on a file instead")
    valid = prepared.meta["splits"]["valid"]
    return open_tokens(prepared.valid_path), float(valid["tokens_per_byte"]), f"valid split of {cfg.data.source}"


def evaluate_checkpoint(ckpt: Path, data: str | None = None, max_batches: int = 0, batch_size: int = 0,
                        device: str | torch.device = "cpu",
                        log: Callable[[str], None] = lambda _m: None) -> tuple[EvalResult, config_mod.Config]:
    """Evaluate one checkpoint on the run's validation split (rebuilt from its recipe) or on `data`.

    Args:
        ckpt: a checkpoint directory.
        data: None for the recipe's validation split (prepared data are reused from the cache); else a
            file, directory or hf:NAME read with the checkpoint's tokenizer.
        max_batches: at most this many batches (0: every window of the data).
        batch_size: windows per batch (0: the recipe's eval.batch_size, else train.batch_size).
        device: where to evaluate.
        log: receives progress lines (data preparation).

    Returns:
        The result and the checkpoint's recipe.
    """
    model, cfg, tok = load_model(ckpt, device)
    if data is None:
        tokens, tokens_per_byte, desc = _split_tokens(cfg, tok, log)
    else:
        from slmtrain.data.sources import load_documents

        docs = load_documents(data_config(data, cfg.data.text_key), "valid")
        tokens, n_bytes = tokenize_documents(tok, docs)
        tokens_per_byte, desc = tokens.shape[0] / n_bytes, data
    bs = batch_size or cfg.eval.batch_size or cfg.train.batch_size
    started = time.perf_counter()
    loss, targets, windows = mean_loss(model, tokens, bs, max_batches)
    log(f"eval: {windows} windows of {model.cfg.seq_len} tokens in {time.perf_counter() - started:.2f}s")
    return EvalResult(loss, perplexity(loss), bits_per_byte(loss, tokens_per_byte), targets, windows,
                      tokens_per_byte, desc), cfg
