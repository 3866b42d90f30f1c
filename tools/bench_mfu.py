"""MFU with the matmul ceiling timed between the training steps, in the one process that trains.

    python tools/bench_mfu.py --side compiled --recipe R.toml --windows 6   # also: eager, reference

On a machine whose speed drifts by a quarter within minutes, a ceiling timed in another process, or a minute
earlier, carries that drift into the MFU. Here windows of 10 training steps alternate with the ceiling (the
largest fp32 GFLOP/s over the training matmul shapes, operands preallocated), and each window's MFU is its
model FLOP/s over the mean of the ceilings timed just before and just after it. Sides: slmtrain's
`train_step` on the pieces `slmtrain run` builds (its process settings included), compiled or eager, or
the plain reference loop of tools/bench_reference.py. Prints one JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reference  # noqa: E402
from bench_train import build_pipeline  # noqa: E402

from slmtrain import config, cpumatmul  # noqa: E402
from slmtrain.config import ModelConfig  # noqa: E402
from slmtrain.data.prepare import open_tokens, prepare_data  # noqa: E402
from slmtrain.run import process_settings  # noqa: E402
from slmtrain.train import train_step  # noqa: E402

WINDOW = 10
SUITE_WIDTHS = (128, 256)  # the ceiling is the best over the suite's two model widths, whichever one trains


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls of `fn`, after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops_per_token(n_layer: int, d: int, vocab: int, ctx: int, mlp: float = 4) -> float:
    """Forward + backward FLOPs per token: 6 x matmul parameters (head included) + attention scores."""
    matmul = n_layer * (3 * d * d + d * d + 2 * mlp * d * d) + vocab * d
    return 6 * matmul + 6 * 2 * n_layer * ctx * d


def matmul_shapes(tokens: int, widths: tuple[int, ...], vocab: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the training matmuls: tokens by width by 3 x / 4 x width (qkv, MLP) and by the vocabulary."""
    return [(tokens, d, m * d) for d in widths for m in (3, 4)] + [(tokens, d, vocab) for d in widths]


class MatmulCeiling:
    """The best GFLOP/s over `shapes`, each the median of `reps` timed products into a preallocated output
    (a fresh output would time the allocator's page faults, not the matmul). In fp32 the best of both CPU
    libraries torch can reach: the BLAS (`torch.mm`, MKL) and oneDNN (`slmtrain.cpumatmul`), which on AMD's
    AVX-512 CPUs runs ~2x MKL's AVX2 path."""

    def __init__(self, shapes: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32) -> None:
        self.shapes = shapes
        self.operands = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype),
                          torch.empty(m, n, dtype=dtype)) for m, k, n in shapes]
        self.libraries = ("blas", "onednn") if dtype == torch.float32 and torch.backends.mkldnn.is_available() \
            else ("blas",)
        self.weights = [b.t().contiguous() for _, b, _ in self.operands] if "onednn" in self.libraries else []

    def per_shape(self, reps: int = 3, library: str = "blas") -> list[float]:
        # oneDNN's op has no out=: where the process keeps glibc's defaults (tools/bench.py, for the reference
        # loop) its vocabulary-wide outputs are page-faulted in each time and read low; the ceiling is the maximum.
        if library == "onednn":
            products = [lambda a=a, w=w: cpumatmul.onednn_linear(a, w) for (a, _, _), w in zip(self.operands,
                                                                                                 self.weights)]
        else:
            products = [lambda a=a, b=b, c=c: torch.mm(a, b, out=c) for a, b, c in self.operands]
        return [2 * m * k * n / median_seconds(f, reps) / 1e9 for (m, k, n), f in zip(self.shapes, products)]

    def __call__(self, reps: int = 3) -> float:
        return max(max(self.per_shape(reps, lib)) for lib in self.libraries)


def interleaved(step: Callable[[], None], flops_per_step: float, ceiling: MatmulCeiling, windows: int,
                warmup: int = 3) -> dict[str, list[float]]:
    """Per window of WINDOW steps: GFLOP/s, the ceilings around it, and MFU over their mean."""
    for _ in range(warmup):  # compilation and first-touch of every buffer
        step()
    before = ceiling()
    out: dict[str, list[float]] = {"gflops": [], "ceilings": [before], "mfu": []}
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(WINDOW):
            step()
        rate = WINDOW * flops_per_step / (time.perf_counter() - t0) / 1e9
        after = ceiling()
        out["gflops"].append(rate)
        out["ceilings"].append(after)
        out["mfu"].append(rate / ((before + after) / 2))
        before = after
    return out


def slmtrain_step(recipe: Path, compiled: bool, cache: Path) -> tuple[Callable[[], None], ModelConfig, int]:
    """slmtrain's fp32 training step on `recipe`'s model and data, its model and its tokens per step."""
    process_settings(config.load(recipe).run)  # first, as a run makes them: before anything is allocated
    cfg, model, optimizer, scheduler, loader = build_pipeline(recipe, cache)
    wrapped = torch.compile(model) if compiled else model
    batches = iter(loader)
    t = cfg.train
    calls = [0]

    def step() -> None:
        stats = train_step(wrapped, batches, optimizer, scheduler, grad_accum=t.grad_accum,
                           grad_clip=cfg.optim.grad_clip, device=torch.device("cpu"), precision="fp32")
        if calls[0] % WINDOW == 0:  # a log step's one sync, as a run has
            float(stats.loss)
        calls[0] += 1

    return step, cfg.model, t.batch_size * t.grad_accum * cfg.model.seq_len


def reference_step(recipe: Path, cache: Path) -> tuple[Callable[[], None], ModelConfig, int]:
    """The plain loop on `recipe`'s model shape (gpt2, no biases, tied head) and prepared training tokens."""
    cfg = config.load(recipe, [f"data.cache_dir='{cache.as_posix()}'"])
    prepared = prepare_data(cfg, log=lambda _m: None)
    m, t = cfg.model, cfg.train
    step = bench_reference.trainer(open_tokens(prepared.train_path), vocab=m.vocab_size, ctx=m.seq_len,
                                   n_layer=m.n_layer, n_head=m.n_head, d=m.n_embd, batch=t.batch_size,
                                   log_every=WINDOW)
    return step, m, t.batch_size * m.seq_len


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=("compiled", "eager", "reference"), required=True)
    p.add_argument("--recipe", type=Path, required=True, help="the model and data to train")
    p.add_argument("--cache", type=Path, help="data.cache_dir (default: a temporary one)")
    p.add_argument("--windows", type=int, default=6)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        if args.side == "reference":
            step, m, tokens = reference_step(args.recipe, cache)
        else:
            step, m, tokens = slmtrain_step(args.recipe, args.side == "compiled", cache)
        ceiling = MatmulCeiling(matmul_shapes(tokens, SUITE_WIDTHS, m.vocab_size))
        fpt = flops_per_token(m.n_layer, m.n_embd, m.vocab_size, m.seq_len)
        result = interleaved(step, tokens * fpt, ceiling, args.windows)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
