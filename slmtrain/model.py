"""The decoder-only transformer: a GPT-2 flavour and a Llama flavour, built from `ModelConfig` alone.

gpt2:  learned absolute positions (`wpe`), LayerNorm, GELU MLP, biases per `cfg.bias`.
llama: RoPE on q/k (rotate-half pairing, as in Hugging Face `LlamaAttention`), RMSNorm, SwiGLU MLP,
       no biases.

Both are pre-norm with a final norm and use `F.scaled_dot_product_attention`. Parameter names follow
GPT-2 (`wte`, `wpe`, `h.{i}.ln_1`, `h.{i}.attn.c_attn`, `h.{i}.attn.c_proj`, `h.{i}.mlp.c_fc`,
`h.{i}.mlp.c_proj`, `ln_f`) so weights map onto Hugging Face layouts with little renaming; note that
`c_attn` and `c_fc` are `nn.Linear`, i.e. (out, in), the transpose of GPT-2's Conv1D.

With tied embeddings (the default) there is no `lm_head` module at all: the logits use `wte.weight`,
so the matrix appears once in `state_dict()` and tying cannot be broken by loading or re-assigning.
This module knows nothing of training, data or checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import slmtrain.cpumatmul as cpumatmul
from slmtrain.config import ModelConfig
from slmtrain.headloss import cross_entropy, head_logits, head_loss


def swiglu_hidden(cfg: ModelConfig) -> int:
    """SwiGLU width: the multiple of 32 nearest to 2/3 * mlp_ratio * n_embd (at least 32).

    The 2/3 keeps the parameter count of the three SwiGLU matrices close to a GELU MLP's two.
    """
    return max(32, 32 * round(2 / 3 * cfg.mlp_ratio * cfg.n_embd / 32))


class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    `k[i]` and `v[i]` are (B, n_head, seq_len, head_dim); positions [0, length) hold valid entries.
    `GPT.forward` writes the new positions of every layer, then advances `length`. `positions` (0 ..
    seq_len-1) and, with RoPE, `rope` (the cos and sin of every position) are built once here, so a decode
    step needs neither an arange nor trigonometry per token.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, seq_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 rope_theta: float | None = None) -> None:
        shape = (batch_size, n_head, seq_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.length = 0
        self.positions = torch.arange(seq_len, device=device)
        self.rope = None if rope_theta is None else \
            rope_angles(head_dim, rope_theta, 0, seq_len, self.positions.device)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, n_head, T, head_dim) at [length, length+T) of `layer`; return all valid ones.

        The returned views are (B, n_head, length+T, head_dim). `length` is not advanced here, because
        every layer writes the same positions; `GPT.forward` advances it once.
        """
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def rope_angles(head_dim: int, theta: float, start: int, length: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin, each (length, head_dim/2), of positions [start, start+length), in fp32.

    Computed per forward rather than kept in a buffer: buffers would be cast by `model.to(bf16)`
    and lost by meta-device init, and the cost is negligible next to attention.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + head_dim/2) of x (B, n_head, T, head_dim) by the given angles, in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


Linear = Callable[[Tensor, nn.Module], Tensor]


_GELU_2U = 2 * math.sqrt(2 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's GELU, `0.5 x (1 + tanh(u))`. Compiled, it is written as the identical `x sigmoid(2u)`: inductor's
    CPU kernels evaluate tanh about 4x slower than exp, and this MLP's activation was a tenth of a compiled
    fp32 training step (tools/bench.py, fastpaths). Eager keeps ATen's own kernel, the faster one there."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(_GELU_2U * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


def apply_linear(x: Tensor, module: nn.Module) -> Tensor:
    """`module` as a linear map of x: a Linear's weight and bias, or a tied head's Embedding weight as one
    (through `cpumatmul.linear`, which picks the CPU's faster fp32 library)."""
    return cpumatmul.linear(x, module.weight, module.bias if isinstance(module, nn.Linear) else None)


def _fp32_attention(q: Tensor) -> bool:
    """Whether attention should compute in fp32: CPU's bf16 attention backward runs 2-3x slower than its fp32
    one (16 x 4 x 256 x 32: 18 vs 9 ms), which costs a bf16 training step more than its matmuls win."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bias = cfg.bias and cfg.flavour == "gpt2"
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)  # rows: q | k | v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # One gain per head dimension shared by all heads, as Qwen3's q_norm / k_norm.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def _qkv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None,
             linear: Linear = apply_linear) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values (B, n_head, T, head_dim), normed and rotated."""
        B, T, C = x.shape
        q, k, v = linear(x, self.c_attn).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            # In fp32: under autocast q and k are bf16 while the gains are fp32, a mix the fused kernel refuses.
            q, k = self.q_norm(q.float()).to(q.dtype), self.k_norm(k.float()).to(k.dtype)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def decode(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache, layer: int, at: Tensor,
               visible: Tensor, linear: Linear = apply_linear, fused: bool = False) -> Tensor:
        """One new position `at` (a 1-element long tensor) per sequence, attending over the whole
        preallocated cache; `visible` (seq_len,) adds -inf at the positions not written yet. Every shape
        is fixed, so a compiled decode step is compiled once.

        `fused` (for a step that will be compiled) writes the single query's attention out as products and
        sums, which inductor fuses into one loop over the cache with the softmax (and the cast of a bf16
        cache); SDPA's CPU kernel costs allocations, copies and two tiny matrix products per layer. Eager,
        SDPA is the one op.
        """
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope, linear)
        keys, values = cache.k[layer], cache.v[layer]
        keys.index_copy_(2, at, k.to(keys.dtype))
        values.index_copy_(2, at, v.to(values.dtype))
        if fused:
            scores = (q * keys.to(q.dtype)).sum(-1, keepdim=True) * self.head_dim ** -0.5  # (B, nh, seq_len, 1)
            weights = (scores + visible.view(-1, 1)).softmax(dim=2)
            y = (weights * values.to(q.dtype)).sum(2, keepdim=True)  # (B, nh, 1, hd)
        else:
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype),
                                               attn_mask=visible.to(q.dtype).view(1, -1))
        return linear(y.transpose(1, 2).reshape(B, T, C), self.c_proj)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self._qkv(x, rope)
        past = 0 if cache is None else cache.length
        mask = None
        if cache is not None:
            k, v = cache.update(layer, k, v)
            # The cache may hold another dtype than autocast produced (e.g. fp32 buffers, bf16 q).
            k, v = k.to(q.dtype), v.to(q.dtype)
            if past > 0 and T > 1:
                # New query i sits at position past+i and may see keys [0, past+i].
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        dtype, fp32 = q.dtype, _fp32_attention(q)
        if fp32:
            q, k, v = q.float(), k.float(), v.float()
        # CPU autocast would cast attention's inputs back to bf16.
        with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                # With past keys and a single query, every key is visible: no mask at all.
                is_causal=past == 0 and T > 1)
        y = y.to(dtype).transpose(1, 2).contiguous().view(B, T, C)  # (B, n_head, T, hd) -> (B, T, C)
        return self.resid_drop(apply_linear(y, self.c_proj))


class MLP(nn.Module):
    """GELU MLP (gpt2) or SwiGLU (llama); `c_fc` holds [gate | up] rows for SwiGLU.

    `relu2` swaps the activation (GELU, or SiLU on the gate) for ReLU squared and keeps the structure,
    so the weights still map onto the flavour's Hugging Face layout.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.flavour == "llama"
        self.relu2 = cfg.relu2
        bias = cfg.bias and not self.swiglu
        hidden = swiglu_hidden(cfg) if self.swiglu else round(cfg.mlp_ratio * cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.project(x))

    def project(self, x: Tensor, linear: Linear = apply_linear) -> Tensor:
        """The MLP without its output dropout, for decode steps (which never drop)."""
        h = linear(x, self.c_fc)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = (F.relu(gate).square() if self.relu2 else F.silu(gate)) * up
        elif self.relu2:
            h = F.relu(h).square()
        else:
            h = gelu_tanh(h)  # GPT-2's GELU, so exported weights behave the same
        return linear(h, self.c_proj)


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.flavour == "llama":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))

    def decode(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache, layer: int, at: Tensor,
               visible: Tensor, linear: Linear = apply_linear, fused: bool = False) -> Tensor:
        x = x + self.attn.decode(self.ln_1(x), rope, cache, layer, at, visible, linear, fused)
        return x + self.mlp.project(self.ln_2(x), linear)


class GPT(nn.Module):
    """Decoder-only language model.

    Args:
        cfg: the model section of a resolved recipe. `vocab_size` must already be resolved (> 0).

    Raises:
        ValueError: vocab_size is 0, n_embd is not divisible by n_head, an odd head size for RoPE,
            or an unknown flavour.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size is 0: resolve it from the tokenizer before building GPT")
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"model.n_embd ({cfg.n_embd}) must be divisible by model.n_head ({cfg.n_head})")
        if cfg.flavour not in ("gpt2", "llama"):
            raise ValueError(f"model.flavour {cfg.flavour!r} is not 'gpt2' or 'llama'")
        if cfg.flavour == "llama" and (cfg.n_embd // cfg.n_head) % 2:
            raise ValueError(f"RoPE needs an even head size, got {cfg.n_embd // cfg.n_head}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd) if cfg.flavour == "gpt2" else None
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = _norm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @property
    def output_weight(self) -> Tensor:
        """The (vocab_size, n_embd) matrix that produces the logits: `wte.weight` itself when tied."""
        return self.head.weight

    @property
    def head(self) -> nn.Module:
        """The module whose weight produces the logits: `wte` when tied, else `lm_head`."""
        return self.wte if self.cfg.tie_embeddings else self.lm_head

    def reset_parameters(self) -> None:
        """Initialise every weight from the global torch RNG (deterministic under `torch.manual_seed`).

        normal(0, init_std) for Linear and Embedding weights, zero biases, unit norm weights; the
        projections that write into the residual stream (attention and MLP `c_proj`) get
        init_std / sqrt(2 * n_layer) so the residual's variance does not grow with depth. With `zero_init`
        those projections and an untied head start at zero: every block begins as the identity and the
        first logits are uniform.
        """
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                zero = self.cfg.zero_init and (name.endswith("c_proj") or name == "lm_head")
                scale = math.sqrt(2 * self.cfg.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=0.0 if zero else std / scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def new_cache(self, batch_size: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences; defaults to the device and dtype of the weights."""
        w = self.wte.weight
        return KVCache(self.cfg.n_layer, batch_size, self.cfg.n_head, self.cfg.seq_len,
                       self.cfg.n_embd // self.cfg.n_head, device or w.device, dtype or w.dtype,
                       self.cfg.rope_theta if self.wpe is None else None)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                loss_only: bool = False, chunked: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """Logits for every position, and the mean next-token loss when targets are given.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) token ids to predict; -1 marks positions left out of the loss.
            cache: continue after the `cache.length` positions already in it, and append these T.
            loss_only: with targets, return (None, loss). A compiled training step needs this: logits it
                returns are an output of the graph, whose backward is then handed a zero-filled gradient of
                all (B, T, V) of them to read.
            chunked: with loss_only, compute the head and the loss by `slmtrain.headloss`, chunk by chunk
                (the logits are never materialised).

        Returns:
            logits (B, T, vocab_size) in the compute dtype, and the fp32 cross-entropy or None.

        Raises:
            ValueError: the context (cache length + T) exceeds seq_len, T is 0, or the batch size
                differs from the cache's.
        """
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if T == 0:
            raise ValueError("forward needs at least one token per sequence")
        if past + T > self.cfg.seq_len:
            raise ValueError(f"context of {past + T} tokens ({past} cached + {T} new) exceeds "
                             f"model.seq_len ({self.cfg.seq_len}); crop the input")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"batch of {B} sequences but the KV cache was made for {cache.batch_size}")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(past, past + T, device=idx.device))
        else:
            rope = rope_angles(self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_theta, past, T, idx.device)
        for layer, block in enumerate(self.h):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.length += T
        if loss_only and chunked and targets is not None:
            h = self.ln_f(x).view(B * T, -1)
            return None, head_loss(h, self.output_weight, targets.reshape(B * T), self.cfg.logit_softcap)
        logits = head_logits(self.ln_f(x), self.output_weight)  # (B, T, V)
        if self.cfg.logit_softcap:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            # fp32 so the loss (and its gradient) does not lose precision under bf16/fp16 autocast.
            loss = cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))
            if loss_only:
                return None, loss
        return logits, loss

    def decode_step(self, token: Tensor, pos: Tensor, cache: KVCache, linear: Linear = apply_linear,
                    fused: bool = False) -> Tensor:
        """Logits (B, vocab_size) of the position after `token` (B, 1), which sits at position `pos` (a 0-d
        long tensor); writes its keys and values at `pos` of every layer of `cache` and does not touch
        `cache.length` (the caller tracks the position). Fixed shapes throughout, for a compiled graph. It
        applies no dropout, so it computes the same in training and in eval mode and needs no mode switch.
        `linear` applies every projection and the output head (default: the modules' own weights); `fused`
        writes attention out for a compiler (`CausalSelfAttention.decode`).
        """
        at = pos.view(1)
        x = self.wte(token)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(at)
        else:
            assert cache.rope is not None, "a RoPE model's cache holds the angles (GPT.new_cache)"
            cos, sin = cache.rope
            rope = cos.index_select(0, at), sin.index_select(0, at)  # (1, head_dim/2) each
        # Additive rather than boolean: SDPA would turn a boolean mask into this in every layer.
        visible = torch.where(cache.positions <= pos, 0.0, float("-inf"))
        for layer, block in enumerate(self.h):
            x = block.decode(x, rope, cache, layer, at, visible, linear, fused)
        logits = linear(self.ln_f(x[:, -1]), self.head)
        if self.cfg.logit_softcap:
            logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
        return logits

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, a shared (tied) tensor counted once.

        Args:
            non_embedding: leave out the token and position embeddings. An untied `lm_head` is a
                projection, not an embedding, so it stays in.
        """
        skip = {id(self.wte.weight)} | ({id(self.wpe.weight)} if self.wpe is not None else set())
        # parameters() already yields a shared tensor once.
        return sum(p.numel() for p in self.parameters() if not (non_embedding and id(p) in skip))

    def param_summary(self) -> str:
        """E.g. "3.21M params (2.69M non-embedding)"."""
        return f"{_human(self.num_params())} params ({_human(self.num_params(non_embedding=True))} non-embedding)"


def _human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)
