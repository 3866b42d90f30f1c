"""A plain, careful GPT training loop, the yardstick `tools/bench.py` races slmtrain against.

Written the way a good minimal trainer is, with nothing of slmtrain in it: one fused qkv `Linear`, SDPA
causal attention, GELU MLP, pre-norm LayerNorm, learned positions, the head tied to the token embedding,
`F.cross_entropy`, `torch.optim.AdamW` (foreach) with decay on matrices, `clip_grad_norm_`, batches sliced
from a numpy memmap with `torch.from_numpy`, and `.item()` only when logging.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.fc = nn.Linear(d, 4 * d, bias=bias)
        self.fc_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, n_layer: int, n_head: int, d: int, bias: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def trainer(data: np.ndarray, *, vocab: int, ctx: int, n_layer: int, n_head: int, d: int, batch: int,
            lr: float = 1e-3, log_every: int = 10, seed: int = 0) -> Callable[[], None]:
    """One training step on a random window of `data` per call (the loss read back every `log_every`)."""
    torch.manual_seed(seed)
    model = RefGPT(vocab, ctx, n_layer, n_head, d)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), foreach=True)
    rng = np.random.default_rng(seed)
    calls = [0]

    def step() -> None:
        starts = rng.integers(0, len(data) - ctx - 1, batch)
        rows = np.stack([data[s:s + ctx + 1] for s in starts]).astype(np.int64)
        xy = torch.from_numpy(rows)
        x, y = xy[:, :-1], xy[:, 1:]
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if calls[0] % log_every == 0:
            loss.item()
        calls[0] += 1

    return step


def train(data: np.ndarray, *, steps: int, **shape: Any) -> list[float]:
    """Train for `steps` steps (`trainer`'s arguments); returns the wall time of every step in seconds."""
    step = trainer(data, **shape)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times
