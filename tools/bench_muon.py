"""Muon on this machine: torch's bf16 Newton-Schulz against an fp32 iteration, and the optimizer step's cost.

    python tools/bench_muon.py                       # the tinystories recipe's model (llama 6L d192)
    python tools/bench_muon.py --layers 4 --width 128

Prints, per optimizer step over the model's hidden matrices: the time of torch's Newton-Schulz (bf16, as
`torch.optim.Muon` runs it) and of the same quintic iteration in fp32, how far apart their results are,
and the time of a whole `optimizer.step()` for AdamW and for Muon + AdamW (median of several repetitions,
with the spread). Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

from slmtrain.config import ModelConfig, OptimConfig
from slmtrain.model import GPT
from slmtrain.optim import build_optimizer, muon_parameters

COEFFS = (DEFAULT_A, DEFAULT_B, DEFAULT_C)


def ns_fp32(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The same quintic iteration as torch's, in fp32."""
    a, b, c = COEFFS
    x = g.float()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _median_ms(fn, reps: int) -> tuple[float, float, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    cfg = ModelConfig(flavour="llama", n_layer=args.layers, n_head=args.heads, n_embd=args.width, seq_len=256,
                      vocab_size=args.vocab)
    torch.manual_seed(0)
    model = GPT(cfg)
    names = muon_parameters(model, OptimConfig(name="muon"))
    grads = [torch.randn_like(p) for n, p in model.named_parameters() if n in names]
    print(f"{len(grads)} hidden matrices, torch {torch.__version__}, {torch.get_num_threads()} threads")
    bf16 = _median_ms(lambda: [_zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7) for g in grads], args.reps)
    fp32 = _median_ms(lambda: [ns_fp32(g) for g in grads], args.reps)
    diff = max(((_zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7).float() - ns_fp32(g)).norm() / ns_fp32(g).norm()).item()
               for g in grads)
    print(f"Newton-Schulz per step: bf16 (torch) {bf16[0]:.1f} ms [{bf16[1]:.1f}-{bf16[2]:.1f}], "
          f"fp32 {fp32[0]:.1f} ms [{fp32[1]:.1f}-{fp32[2]:.1f}]; largest relative difference {diff:.3f}")
    for name in ("adamw", "muon"):
        opt = build_optimizer(model, OptimConfig(name=name), "cpu")
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()  # state allocated outside the timing
        ms = _median_ms(opt.step, args.reps)
        print(f"optimizer.step() {name:>5}: {ms[0]:.1f} ms [{ms[1]:.1f}-{ms[2]:.1f}]")


if __name__ == "__main__":
    main()
