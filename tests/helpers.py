"""Shared helpers for tests that run whole trainings: a tiny recipe and metric readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmtrain.log import read_jsonl

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = """
[run]
name = "tiny"
seed = 7
device = "cpu"

[data]
source = "builtin"
builtin_train_stories = 1500
builtin_valid_stories = 100
cache_dir = "{cache}"

[tokenizer]
kind = "bpe"
vocab_size = 512
train_documents = 1500

[model]
n_layer = 2
n_head = 2
n_embd = 64
seq_len = 64

[optim]
lr = 5e-3

[schedule]
warmup_steps = 5

[train]
batch_size = 16
max_steps = 80

[eval]
every_steps = 20
batches = 4
sample_tokens = 40

[checkpoint]
every_steps = 20
reference_tokens = 8

[log]
every_steps = 1
progress = false
"""


def write_recipe(tmp: Path, cache: Path, extra: str = "", name: str = "tiny.toml") -> Path:
    """A tiny recipe; `cache` is shared across tests so data preparation is done once per session."""
    path = tmp / name
    path.write_text(TINY_RECIPE.format(cache=cache.as_posix()) + extra)
    return path


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"}


def events(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "event" and r["event"] == name]


def slmtrain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "slmtrain", *args]


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
            **kw: Any) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(slmtrain_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, **kw)
