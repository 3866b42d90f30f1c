"""Greedy generation speed with and without the KV cache, on a ~3M-parameter model (random weights).

    python tools/bench_generate.py [--tokens 200] [--repeats 3] [--device cpu] [--threads N]

Prints tokens/s per flavour for both paths. The weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from slmtrain.config import ModelConfig
from slmtrain.generate import generate
from slmtrain.model import GPT


def tokens_per_s(model: GPT, prompt: list[int], n: int, use_cache: bool, repeats: int) -> float:
    """Best of `repeats` timed runs: on a shared machine the best run is the least disturbed one."""
    list(generate(model, prompt, 8, use_cache=use_cache))  # warm-up (allocator, kernels)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = list(generate(model, prompt, n, use_cache=use_cache))
        elapsed = time.perf_counter() - start
        if len(out) != n:
            raise RuntimeError(f"expected {n} tokens, got {len(out)}: lower --tokens")
        best = max(best, n / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (the best is shown)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = [1, 17, 256, 3000, 42, 7, 99, 1024]
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"prompt {len(prompt)} tokens, {args.tokens} new tokens, greedy, best of {args.repeats}")
    for flavour in ("gpt2", "llama"):
        cfg = ModelConfig(flavour=flavour, n_layer=5, n_head=6, n_embd=192, seq_len=256, vocab_size=4096)
        torch.manual_seed(0)
        model = GPT(cfg).to(args.device).eval()
        cached = tokens_per_s(model, prompt, args.tokens, use_cache=True, repeats=args.repeats)
        uncached = tokens_per_s(model, prompt, args.tokens, use_cache=False, repeats=args.repeats)
        print(f"{flavour:6s} {model.param_summary():32s} cache {cached:8.1f} tok/s   "
              f"no cache {uncached:8.1f} tok/s   speed-up {cached / uncached:4.1f}x")


if __name__ == "__main__":
    main()
