"""GPU check: run the GPU recipe for a few minutes and report what the hardware gives.

    SLMTRAIN_DATA=/data python tools/gpu_check.py                    # 3-minute budget, bf16, compiled
    python tools/gpu_check.py --minutes 5 --peak-tflops 989          # H100 SXM dense bf16 peak

Prints tokens/s, MFU against the GPU's bf16 peak (--peak-tflops, else a table of known GPUs by name),
peak memory, compile time (the first logged interval's extra seconds), and a bf16-vs-fp32 parity check:
the same model and batches for 20 steps in both precisions, with the largest gap of their losses. Then
greedy decoding of the trained model on the GPU, eager and compiled (`generate(compiled=True)`): tokens/s
and how many tokens the two agree on. Without CUDA it says so and exits 2. Asserts nothing else.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}


def peak_tflops(name: str, given: float) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in name.lower()), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(REPO / "recipes" / "tinystories-gpu.toml"))
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 dense peak of this GPU in TFLOP/s")
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tools"))
    from bench import flops_per_token

    from slmtrain import cli, config
    from slmtrain.log import read_jsonl

    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    os.environ.setdefault("SLMTRAIN_DATA", str(REPO.parent / "shared" / "data"))
    work = Path(tempfile.mkdtemp(prefix="slmtrain-gpu-"))
    sets = [f"train.max_minutes={args.minutes}", "log.every_steps=10", "log.progress=false", *args.sets]
    torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    code = cli.main(["run", args.recipe, "--run-dir", str(work / "run")] + [a for s in sets for a in ("--set", s)])
    wall = time.monotonic() - t0
    if code != 0:
        print(f"the run exited {code}", file=sys.stderr)
        return 1
    cfg = config.load(work / "run" / "recipe.toml")
    records = read_jsonl(work / "run" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    rates = [r["tokens_per_s"] for r in train[2:]]
    m = cfg.model
    fpt = flops_per_token(m.n_layer, m.n_embd, m.vocab_size, m.seq_len, mlp=4)
    tps = statistics.median(rates)
    tokens_per_step = train[-1]["tokens"] / train[-1]["step"]
    first = train[1]  # step 10: compilation happens in the first interval
    compile_s = first["step"] * tokens_per_step / first["tokens_per_s"] - first["step"] * tokens_per_step / tps
    print(f"GPU {name}: {tps:,.0f} tokens/s (median of {len(rates)} intervals), "
          f"{tps * fpt / 1e12:.1f} TFLOP/s model FLOPs"
          + (f", MFU {100 * tps * fpt / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s bf16" if peak else ", MFU: unknown peak")
          + f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; compile ~{compile_s:.0f}s; "
          f"run wall {wall:.0f}s for a {args.minutes} min budget")
    parity = []
    for precision in ("fp32", "bf16"):
        run = work / f"parity-{precision}"
        assert cli.main(["run", args.recipe, "--run-dir", str(run), "--set", "train.max_minutes=0",
                         "--set", "train.max_steps=20", "--set", f"run.precision='{precision}'",
                         "--set", "run.compile=false", "--set", "log.every_steps=1", "--set", "eval.every_steps=0",
                         "--set", "log.progress=false"]) == 0
        parity.append({r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"})
    gap = max(abs(parity[0][s] - parity[1][s]) for s in parity[0])
    print(f"bf16 vs fp32 over 20 steps: largest loss gap {gap:.4f} nats (first {parity[0][1]:.4f} / "
          f"{parity[1][1]:.4f}, last {parity[0][20]:.4f} / {parity[1][20]:.4f})")
    decode_check(work / "run")
    return 0


def decode_check(run: Path, n: int = 200, device: str = "cuda") -> None:
    """Greedy decoding of the trained model on the GPU, eager and through the compiled graphs: tokens/s and
    whether they pick the same tokens."""
    import slmtrain
    from slmtrain.generate import generate

    model = slmtrain.load_model(run, device=device)[0].eval()
    prompt = [1, 17, 256, 42]
    n = min(n, model.cfg.seq_len - len(prompt))
    rates, tokens = {}, {}
    for compiled in (False, True, True):  # the first compiled call compiles
        start = time.perf_counter()
        tokens[compiled] = list(generate(model, prompt, n, compiled=compiled))
        rates[compiled] = len(tokens[compiled]) / (time.perf_counter() - start)
    same = sum(a == b for a, b in zip(tokens[False], tokens[True]))
    print(f"greedy decoding on {device}: eager {rates[False]:,.0f} tokens/s, compiled {rates[True]:,.0f}; "
          f"{same} of {len(tokens[False])} tokens the same")


if __name__ == "__main__":
    raise SystemExit(main())
