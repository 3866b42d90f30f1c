"""Greedy generation speed on a ~3M-parameter model (random weights): KV cache eager and compiled, exact fp32
and int8 weights (`generate(weights="int8")`), no cache.

    python tools/bench_generate.py [--tokens 200] [--repeats 5] [--device cpu] [--threads N] [--no-compile]

The paths alternate (A, B, C, A, B, C, ...), so a shared machine's drift hits them alike; each figure is
the median tokens/s with its range [min-max] over --repeats runs. `bound` is the model's matrix-vector
products alone, each weight read once as a decode step reads it: no decode step beats it, so it shows how
much of a step is overhead. --threads is `generate(threads=...)` (0: torch's own setting). The weights are
random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slmtrain.config import ModelConfig
from slmtrain.generate import generate
from slmtrain.model import GPT


def timed(model: GPT, prompt: list[int], n: int, use_cache: bool, compiled: bool = False,
          threads: int | None = 1, weights: str = "fp32") -> float:
    """Tokens/s of one generation of exactly `n` tokens."""
    start = time.perf_counter()
    out = list(generate(model, prompt, n, use_cache=use_cache, compiled=compiled, threads=threads, weights=weights))
    elapsed = time.perf_counter() - start
    if len(out) != n:
        raise RuntimeError(f"expected {n} tokens, got {len(out)}: lower --tokens")
    return n / elapsed


def tokens_per_s(model: GPT, prompt: list[int], n: int, use_cache: bool, repeats: int, compiled: bool = False,
                 threads: int | None = 1, weights: str = "fp32") -> float:
    """Best of `repeats` timed runs after a warm-up (which compiles): on a shared machine the best run is the
    least disturbed."""
    list(generate(model, prompt, 8, use_cache=use_cache, compiled=compiled, threads=threads, weights=weights))
    return max(timed(model, prompt, n, use_cache, compiled, threads, weights) for _ in range(repeats))


def weights_bound(model: GPT, n: int, threads: int | None) -> float:
    """Tokens/s of the model's matrix-vector products alone (every Linear and the output head), n times."""
    mats = [(m.weight, m.bias) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    mats.append((model.output_weight, None))
    xs = {w.shape[1]: torch.randn(1, w.shape[1], device=w.device, dtype=w.dtype) for w, _ in mats}
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(n):
                for w, b in mats:
                    F.linear(xs[w.shape[1]], w, b)
            return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median and range shown)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="decode threads, generate(threads=N) (0: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled decode step")
    args = parser.parse_args()
    threads = args.threads or None
    prompt = [1, 17, 256, 3000, 42, 7, 99, 1024]
    print(f"torch {torch.__version__}, device {args.device}, decode threads {threads or torch.get_num_threads()}, "
          f"prompt {len(prompt)} tokens, {args.tokens} new tokens, greedy, median [min-max] of {args.repeats}")
    for flavour in ("gpt2", "llama"):
        cfg = ModelConfig(flavour=flavour, n_layer=5, n_head=6, n_embd=192, seq_len=256, vocab_size=4096)
        torch.manual_seed(0)
        model = GPT(cfg).to(args.device).eval()
        paths: dict[str, Callable[[], float]] = {
            "cache": lambda: timed(model, prompt, args.tokens, True, False, threads),
            "compiled": lambda: timed(model, prompt, args.tokens, True, True, threads),
            "int8": lambda: timed(model, prompt, args.tokens, True, False, threads, "int8"),
            "int8 comp": lambda: timed(model, prompt, args.tokens, True, True, threads, "int8"),
            "no cache": lambda: timed(model, prompt, args.tokens, False, False, threads),
            "bound": lambda: weights_bound(model, args.tokens, threads),
        }
        if args.no_compile:
            del paths["compiled"], paths["int8 comp"]
        start = time.perf_counter()
        for run in paths.values():  # warm-up; the compiled step compiles here
            run()
        print(f"{flavour}: {model.param_summary()}, warm-up {time.perf_counter() - start:.0f} s")
        speeds: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, run in paths.items():
                speeds[name].append(run())
        for name, v in speeds.items():
            print(f"  {name:9s} {statistics.median(v):8.0f} tok/s  [{min(v):.0f}-{max(v):.0f}]")


if __name__ == "__main__":
    main()
