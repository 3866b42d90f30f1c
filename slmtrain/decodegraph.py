"""Compiled decode steps: `GPT.decode_step` traced once into an FX graph and compiled by inductor, then called
directly, with no dynamo frame around it.

Through `torch.compile`, each call of a 3M-parameter model's int8 step on CPU spent ~0.3 ms of its ~0.8 ms
outside the compiled code: guard checks over every parameter and module attribute, and the runtime
wrappers. Called directly, the graph costs a Python call. A greedy graph also decodes `GREEDY_BLOCK` tokens
per call, each token's argmax fed to the next inside the graph, which spreads what is left over the block.

Every tensor a step reads is an input of its graph: the parameters, the tensors of an int8 copy
(`weights.tensors`, read by index by its `linear`), the cache's keys, values, positions and RoPE angles. So
a graph holds no weights, follows in-place changes and replaced parameters alike, and inductor's on-disk
cache serves the same shapes in a later process. Shapes are fixed: batch 1, the model's seq_len, the cache's
dtype. Tracing runs the step once on a scratch cache.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from slmtrain.model import GPT, KVCache, Linear, apply_linear

# Tokens per greedy call. On a 3M-parameter model (int8, one CPU thread, run side by side) 1, 4 and 8 gave
# ~1,260, ~1,550 and ~1,620 tokens/s; compiling took ~16, ~27 and ~90 s.
GREEDY_BLOCK = 4

Step = Callable[[Tensor, Tensor, KVCache], Tensor]


class Weights(Protocol):
    """Weights a `Linear` applies instead of the modules' own: it reads them from `tensors` by index."""

    tensors: list[Tensor]

    def __call__(self, x: Tensor, module: nn.Module) -> Tensor: ...


# Per model: (graph kind, int8 or not, cache dtype, device) -> the compiled graph, which takes flat tensors.
_GRAPHS: weakref.WeakKeyDictionary[GPT, dict[tuple[object, ...], Callable[..., object]]] = \
    weakref.WeakKeyDictionary()


def linear_for(weights: Weights | None) -> Linear:
    """What applies the projections of a step with `weights` (None: the modules' own weights)."""
    return apply_linear if weights is None else weights


def advance(model: GPT, linear: Linear, token: Tensor, pos: Tensor, cache: KVCache, fused: bool = False) -> Tensor:
    """Logits (1, vocab_size) of one decode step after `token` at `pos`, which it advances: the step every
    decoder takes, eager or traced (`fused`, see `GPT.decode_step`)."""
    logits = model.decode_step(token, pos, cache, linear, fused=fused)
    pos.add_(1)
    return logits


def logits_step(model: GPT, weights: Weights | None, cache_dtype: torch.dtype) -> Step:
    """The compiled step `(token (1, 1), pos (0-d), cache) -> fp32 logits (vocab_size,)`; advances `pos`.

    It applies `weights` when given, else the model's own; it is bound to the tensors they hold now (make
    another after replacing one).
    """
    linear = linear_for(weights)

    def step(token: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        return advance(model, linear, token, pos, cache, fused=True)[0].float()
    return _bound(model, "logits", weights, cache_dtype, step)


def greedy_block(model: GPT, weights: Weights | None, cache_dtype: torch.dtype) -> Step:
    """The compiled block `(token (1, 1), pos (0-d), cache) -> GREEDY_BLOCK argmax tokens (GREEDY_BLOCK,)`.

    It feeds `token` at `pos` and every token it picks but the last at the positions after it, and advances
    `pos` by GREEDY_BLOCK; the cache needs that many free positions from `pos`. Arguments as `logits_step`.
    """
    linear = linear_for(weights)

    def block(token: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        picked = []
        for _ in range(GREEDY_BLOCK):
            token = advance(model, linear, token, pos, cache, fused=True).argmax(-1, keepdim=True)  # (1, 1)
            picked.append(token)
        return torch.cat(picked).view(-1)
    return _bound(model, f"greedy{GREEDY_BLOCK}", weights, cache_dtype, block)


def _bound(model: GPT, kind: str, weights: Weights | None, cache_dtype: torch.dtype, step: Step) -> Step:
    """`step` compiled (once per model, kind, weights' kind, cache dtype and device) and called with the tensors
    of `model` and `weights` as they are now."""
    graphs = _GRAPHS.setdefault(model, {})
    # The device too: `model.to()` keeps the Parameter objects and moves what they hold (a model moved to another
    # dtype has a cache of that dtype).
    slot = (kind, weights is None, cache_dtype, model.wte.weight.device)
    if slot not in graphs:
        graphs[slot] = _compile(model, weights, cache_dtype, step)
    graph = graphs[slot]
    held = [*model.parameters(), *(weights.tensors if weights is not None else ())]

    def call(token: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        return graph(*held, token, pos, *_cache_tensors(cache))[0]  # `flat` returns a 1-tuple
    return call


def _cache_tensors(cache: KVCache) -> list[Tensor]:
    return [cache.positions, *(cache.rope or ()), *cache.k, *cache.v]


def _compile(model: GPT, weights: Weights | None, cache_dtype: torch.dtype, step: Step) -> Callable[..., object]:
    names = [f"model.{name}" for name, _ in model.named_parameters()]  # a tied matrix is listed once
    n_held = len(names) + (len(weights.tensors) if weights is not None else 0)
    scratch = model.new_cache(1, dtype=cache_dtype)
    n_rope, n_layer = len(scratch.rope or ()), len(scratch.k)

    def flat(*args: Tensor) -> tuple[Tensor]:
        params, extra = dict(zip(names, args)), list(args[len(names):n_held])
        token, pos, positions, *rest = args[n_held:]
        cache = copy.copy(scratch)
        cache.positions = positions
        cache.rope = (rest[0], rest[1]) if n_rope else None
        cache.k, cache.v = list(rest[n_rope:n_rope + n_layer]), list(rest[n_rope + n_layer:])
        with _holding(weights, extra):
            return (torch.func.functional_call(_Calling(model, step), params, (token, pos, cache)),)

    device = scratch.positions.device
    example = [*model.parameters(), *(weights.tensors if weights is not None else ()),
               torch.zeros(1, 1, dtype=torch.long, device=device), torch.zeros((), dtype=torch.long, device=device),
               *_cache_tensors(scratch)]
    with torch.no_grad():
        gm = make_fx(flat)(*example)
        _drop_trace_meta(gm)
        # Launching the kernels from C++ rather than Python made a 3M-parameter step 17-37 % faster on CPU.
        # standalone_compile rather than torch._inductor.compile: it gives inductor the shape environment its
        # on-disk graph cache needs.
        return torch._inductor.standalone_compile(gm, example, dynamic_shapes="from_example_inputs",
                                                  options={"config_patches": {"cpp_wrapper": True}},
                                                  donate_graph_module=True)


class _Calling(nn.Module):
    """`step` as a module's forward, with `model` as its submodule: `functional_call` swaps in the traced
    parameters around a forward only."""

    def __init__(self, model: GPT, step: Step) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, token: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        return self.step(token, pos, cache)


@contextlib.contextmanager
def _holding(weights: Weights | None, tensors: list[Tensor]) -> Iterator[None]:
    """`weights` reading `tensors` inside the block (the trace's inputs), its own again after it."""
    if weights is None:
        yield
        return
    own, weights.tensors = weights.tensors, tensors
    try:
        yield
    finally:
        weights.tensors = own


def _drop_trace_meta(gm: fx.GraphModule) -> None:
    """Forget make_fx's example values: they come from several fake modes, which inductor refuses to mix,
    and it propagates its own."""
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
        node.meta.pop("tensor_meta", None)

