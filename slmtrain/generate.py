"""Decoding: streamed sampling with a KV cache, greedy references with logit margins, log-probs.

Every function runs the model without autograd and in eval mode and puts the caller's modes back after
each step, so a half-consumed stream never leaves them changed. Decoding on CPU computes each token with
one intra-op thread unless told otherwise (`threads`), the caller's count put back between tokens.
Inputs go to the device of the model's weights. Prompts are lists of token ids; a prompt longer
than `seq_len` is cropped to its last `seq_len` tokens.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from slmtrain.decodegraph import GREEDY_BLOCK, Step, advance, greedy_block, linear_for, logits_step
from slmtrain.model import GPT, KVCache


@contextlib.contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    # Switching modes walks every module (a fifth of a small model's decode time), so skip it when
    # the model is already in eval mode, as it is in `slmtrain generate`.
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block (None: left alone), and put back after it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Decoder:
    """Feeds a growing sequence to the model one token at a time and returns what comes next.

    With a cache each token is fed once, and the decoder is `full` when the next token no longer fits.
    The prompt (and anything fed more than one token at a time) goes through the model's forward; after
    it each single token goes through the fixed-shape decode step, whose token and position tensors are
    reused (the step advances the position in place): a token costs no mask, tensor creation or mode
    switch in Python. Compiled, each step is a `slmtrain.decodegraph` graph, and greedy decoding takes a block of
    tokens per call (kept in `ahead`; the stream's pushes of the ones the block fed are not fed again), with
    single eager steps where a block no longer fits in the cache. Without a cache the whole
    sequence is fed every step, cropped to its last seq_len tokens, so it never fills up (and positions
    slide: the model sees a window, not the true start of the text).
    """

    def __init__(self, model: GPT, prompt_ids: list[int], use_cache: bool, compiled: bool = False,
                 threads: int | None = 1, weights: str = "fp32") -> None:
        seq_len, vocab = model.cfg.seq_len, model.cfg.vocab_size
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token id (e.g. the EOS id as a start token)")
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (None: torch's setting), got {threads}")
        if weights not in ("fp32", "int8"):
            raise ValueError(f"weights must be 'fp32' (exact) or 'int8' (weight-only quantized), got {weights!r}")
        self.model = model
        self.device = model.wte.weight.device
        self.threads = threads if self.device.type == "cpu" else None
        self.ids = list(prompt_ids[-seq_len:])
        # Zeroing the cache is split across threads like any large op: one split costs milliseconds when
        # the machine is busy.
        int8 = weights == "int8" and use_cache
        with _cpu_threads(self.threads):
            # int8 decoding keeps keys and values in bf16: half the bytes each step reads.
            self.cache = model.new_cache(1, dtype=torch.bfloat16 if int8 else None) if use_cache else None
        self.pending = list(self.ids)  # tokens the cache has not seen yet
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros((), dtype=torch.long, device=self.device)
        self.int8 = _int8_weights(model) if int8 else None
        # FSDP2 gathers sharded weights in forward hooks only: a sharded model decodes through forward.
        self.fixed = not any(type(m).__name__.startswith("FSDP") for m in model.modules())
        self.compiled = compiled and use_cache and self.fixed
        # The compiled steps, made at their first use (compiling takes seconds), bound to today's weights.
        self.logits_graph: Step | None = None
        self.greedy_graph: Step | None = None
        self.ahead: list[int] = []  # greedy tokens a compiled block picked that the caller has not taken yet
        self.fed = 0  # how many of the next pushed tokens the cache holds already (a block fed them)

    @property
    def full(self) -> bool:
        """True when the cache has no room left for the pending tokens."""
        return self.cache is not None and self.cache.length + len(self.pending) > self.model.cfg.seq_len

    def _step_cache(self, tokens: int = 1) -> KVCache | None:
        """The cache when the pending token goes through a decode step that feeds `tokens` tokens (it is moved
        into `token`, and the cache's length advanced by `tokens`), else None."""
        cache = self.cache
        if not (self.fixed and cache is not None and len(self.pending) == 1 and cache.length > 0
                and cache.length + tokens <= self.model.cfg.seq_len):
            return None
        self.token.fill_(self.pending[0])
        cache.length += tokens
        self.pending = []
        return cache

    def next_logits(self) -> Tensor:
        """fp32 logits (vocab_size,) for the token after `ids`."""
        with torch.inference_mode(), _cpu_threads(self.threads):
            cache = self._step_cache()
            if cache is None:
                return self._forward()
            if self.compiled:
                if self.logits_graph is None:
                    self.logits_graph = logits_step(self.model, self.int8, cache.k[0].dtype)
                return self.logits_graph(self.token, self.pos, cache)
            return self._advance(cache)[0].float()

    def next_greedy(self) -> int:
        """The argmax token after `ids`."""
        if self.ahead:
            return self.ahead.pop(0)
        with torch.inference_mode(), _cpu_threads(self.threads):
            cache = self._step_cache(GREEDY_BLOCK) if self.compiled else None
            if cache is not None:
                if self.greedy_graph is None:
                    self.greedy_graph = greedy_block(self.model, self.int8, cache.k[0].dtype)
                # tolist() is the one host sync per block: the caller needs the ids to yield them or stop at EOS.
                self.ahead = self.greedy_graph(self.token, self.pos, cache).tolist()
                self.fed = len(self.ahead) - 1  # the cache holds every picked token but the last
                return self.ahead.pop(0)
            # Eager, or a compiled decoder too close to the end of the cache for a block.
            cache = self._step_cache()
            if cache is None:
                return int(self._forward().argmax())
            return int(self._advance(cache)[0].argmax())

    def _advance(self, cache: KVCache) -> Tensor:
        """The eager decode step of the pending token, already moved into `token`."""
        return advance(self.model, linear_for(self.int8), self.token, self.pos, cache)

    def _forward(self) -> Tensor:
        feed = self.pending if self.cache is not None else self.ids[-self.model.cfg.seq_len:]
        idx = torch.tensor([feed], dtype=torch.long, device=self.device)
        with _eval_mode(self.model):
            logits, _ = self.model(idx, cache=self.cache)
        self.pending = []
        if self.cache is not None:
            self.pos.fill_(self.cache.length)
        return logits[0, -1].float()

    def push(self, token: int) -> None:
        self.ids.append(token)
        if self.fed:
            self.fed -= 1
        else:
            self.pending.append(token)


class _Int8Linear:
    """Per-output-channel symmetric int8 copies of a model's Linear weights and output head, applied with
    bf16 activations by `torch.ops.aten._weight_int8pack_mm` (a `Linear` for `GPT.decode_step`).

    Each row w of a weight is stored as round(w / s) in [-127, 127] with s = max|w| / 127 (in bf16); biases
    stay the model's fp32 ones, read from the modules. The model is not touched. `stale` tells whether the
    model's parameters were replaced or changed in place (an optimizer step, a load) since the copy was made.
    """

    def __init__(self, model: GPT) -> None:
        self.versions = _versions(model)
        modules = [m for m in model.modules() if isinstance(m, nn.Linear)] + [model.head]
        # A module finds its weights' index in a dict and the weights in a flat list ([w8, scale] per module),
        # which a compiled graph takes as its inputs (`slmtrain.decodegraph.Weights`).
        self.index = {m: 2 * i for i, m in enumerate(modules)}
        self.tensors: list[Tensor] = []
        with torch.no_grad():
            for module in modules:
                w = module.weight.detach().float()
                scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
                w8 = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
                self.tensors += [w8, scale.to(torch.bfloat16)]

    def stale(self, model: GPT) -> bool:
        return _versions(model) != self.versions

    def __call__(self, x: Tensor, module: nn.Module) -> Tensor:
        i = self.index[module]
        w8, scale = self.tensors[i], self.tensors[i + 1]
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), w8, scale)
        y = y.view(*x.shape[:-1], -1).to(x.dtype)
        bias = getattr(module, "bias", None)
        return y if bias is None else y + bias


def _versions(model: GPT) -> list[tuple[int, int]]:
    """The identity and in-place version counter of every parameter."""
    return [(id(p), p._version) for p in model.parameters()]


_INT8: weakref.WeakKeyDictionary[GPT, _Int8Linear] = weakref.WeakKeyDictionary()


def _int8_weights(model: GPT) -> _Int8Linear:
    """The int8 copy of `model`'s weights, made on first use and again when the weights have changed."""
    weights = _INT8.get(model)
    if weights is None or weights.stale(model):
        weights = _INT8[model] = _Int8Linear(model)
    return weights


def _filter(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p; the top-1 always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    return logits


def generate(model: GPT, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             compiled: bool = False, threads: int | None = 1, weights: str = "fp32") -> Iterator[int]:
    """Stream new token ids one at a time after `prompt_ids`.

    Greedy (argmax) when temperature is 0, otherwise sampling from softmax(logits / temperature)
    after top-k and nucleus (top-p) filtering, drawn with `torch.multinomial(generator=generator)`:
    the same seeded generator gives the same tokens. Arguments are checked at call time; tokens are
    computed lazily as the iterator is consumed.

    The stream ends after `max_new_tokens`, before yielding `eos_id`, or when the context is full.
    With the cache at most seq_len - len(prompt) + 1 tokens come out: the last one is predicted from
    a full context and never fed back. Without the cache the input is cropped to its last
    seq_len tokens each step, so generation may run past seq_len at the cost of a sliding window and
    a full forward per token.

    Args:
        model: the (unwrapped) model; it is used on its own device.
        prompt_ids: at least one token id; longer than seq_len: only the last seq_len are used.
        max_new_tokens: upper bound on yielded tokens (>= 0).
        temperature: 0 for greedy, else > 0.
        top_k: keep the k most likely tokens (0: off).
        top_p: keep the smallest set of tokens whose probability reaches top_p, in (0, 1].
        eos_id: stop when this token is produced (it is not yielded).
        generator: RNG for sampling; on another device than the model, sampling happens there.
        use_cache: decode with a KV cache (the fast path).
        compiled: with the cache, decode through inductor-compiled graphs of the step (`slmtrain.decodegraph`),
            greedy `GREEDY_BLOCK` tokens per call. Compiled at the first token for this model and kind of step:
            ~20-50 s on a 2-core CPU the first time, a few seconds once inductor's disk cache holds the shapes.
            Pays off for long or many generations.
        threads: torch's intra-op thread count on CPU while a token is computed, the caller's count put back
            between tokens (None: leave torch's setting). One by default: a small model's per-token matmuls
            gain little from a second thread, and on a busy machine every split op waits for a thread the OS
            has descheduled (on a shared 2-core CPU, 2 threads made decoding 10-70x slower under load).
        weights: "fp32" (exact, the default) or "int8": with the cache, each single-token step uses per-output-
            channel int8 copies of every Linear weight and the head (made once per model, again after the
            weights change; the model is untouched) with bf16 activations, and keys and values are kept in
            bf16. Approximate: on the quickstart checkpoint (llama, 4 x 192) 97.6 % of 1,200 teacher-forced
            greedy tokens matched fp32's; free-running, streams part where a near-tie flips. Compiled, it
            decoded a 3M-parameter model ~1.6x faster than the compiled fp32 step on CPU.

    Raises:
        ValueError: a negative max_new_tokens or top_k, a negative or non-finite temperature, top_p
            outside (0, 1], threads < 1, weights not "fp32" or "int8", an empty prompt or token ids outside
            the vocabulary.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0.0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}")
    decoder = _Decoder(model, prompt_ids, use_cache, compiled, threads, weights)
    return _stream(decoder, max_new_tokens, temperature, top_k, top_p, eos_id, generator)


def _stream(decoder: _Decoder, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
            eos_id: int | None, generator: torch.Generator | None) -> Iterator[int]:
    for i in range(max_new_tokens):
        if temperature == 0.0:
            token = decoder.next_greedy()
        else:
            logits = decoder.next_logits()
            probs = _filter(logits / temperature, top_k, top_p).softmax(-1)
            if generator is not None:
                probs = probs.to(generator.device)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == eos_id:
            return
        yield token
        if i + 1 < max_new_tokens:
            decoder.push(token)
            if decoder.full:
                return


def greedy_with_margins(model: GPT, prompt_ids: list[int], n_tokens: int) -> tuple[list[int], list[float]]:
    """Exactly `n_tokens` greedy tokens (EOS included, not a stop) and each step's top-1 minus top-2 logit.

    The margin is taken on fp32 logits; a replay may legitimately pick another token only where it
    was small. The KV cache is used when the whole continuation fits in seq_len, otherwise the
    cropped full-forward path, so the same (prompt, n_tokens, seq_len) always takes the same path.

    Raises:
        ValueError: n_tokens < 0, an empty prompt or token ids outside the vocabulary.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    fits = min(len(prompt_ids), model.cfg.seq_len) + n_tokens - 1 <= model.cfg.seq_len
    decoder = _Decoder(model, prompt_ids, use_cache=fits)
    tokens: list[int] = []
    margins: list[float] = []
    for _ in range(n_tokens):
        logits = decoder.next_logits()
        top2 = torch.topk(logits, min(2, logits.numel())).values
        token = int(logits.argmax())
        tokens.append(token)
        margins.append(float(top2[0] - top2[1]) if top2.numel() == 2 else math.inf)
        if len(tokens) < n_tokens:
            decoder.push(token)
    return tokens, margins


def next_token_logprobs(model: GPT, idx: Tensor) -> Tensor:
    """fp32 log-softmax of the logits: (B, T, vocab_size), the next-token distribution at every position.

    `idx` is (B, T) with T <= seq_len; it is moved to the model's device. Take `[:, -1]` for the
    distribution after the whole sequence.
    """
    with _eval_mode(model):
        logits, _ = model(idx.to(model.wte.weight.device))
    return torch.log_softmax(logits.float(), dim=-1)
