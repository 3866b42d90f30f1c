"""How long `slmtrain verify` takes: a tiny model and a ~20M-parameter one, on CPU.

    python tools/bench_verify.py [--out DIR] [--repeats 3] [--threads N] [--checkpoint PATH ...]

Trains each model for 2 steps on the built-in stories with `slmtrain run` (so the checkpoint is what a real
run writes), then times `verify` in-process (torch already imported): the first call and the best of
--repeats, with the time of each check for the best call. --checkpoint times existing checkpoints instead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from slmtrain import cli
from slmtrain.verify import Report, resolve_targets, verify

# Built-in data, a trained BPE; the model sections below make ~0.14M and ~20M parameters. The vocabulary sizes
# stay below what a BPE can learn from 3000 built-in stories (~2400 tokens), so the trained size is the asked one.
BASE = ["--set", "data.builtin_train_stories=3000", "--set", "data.builtin_valid_stories=100",
        "--set", "tokenizer.train_documents=3000", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
        "--set", "eval.every_steps=0", "--set", "eval.batches=1", "--set", "eval.samples=0",
        "--set", "schedule.warmup_steps=1", "--set", "log.progress=false", "--set", "run.device='cpu'"]
MODELS = {
    "tiny": ["--set", "tokenizer.vocab_size=512", "--set", "model.n_layer=2", "--set", "model.n_head=2",
             "--set", "model.n_embd=64", "--set", "model.seq_len=64"],
    "20M": ["--set", "tokenizer.vocab_size=2048", "--set", "model.n_layer=11", "--set", "model.n_head=6",
            "--set", "model.n_embd=384", "--set", "model.seq_len=256"],
}


def make_checkpoint(out: Path, name: str) -> Path:
    """Train `name` for 2 steps under `out` (reused if already there); returns its checkpoint."""
    run_dir = out / name
    if not (run_dir / "checkpoints" / "latest").exists():
        recipe = out / "bench.toml"
        recipe.write_text(f'[data]\ncache_dir = "{(out / "cache").as_posix()}"\n')
        code = cli.main(["run", str(recipe), "--run-dir", str(run_dir), *BASE, *MODELS[name]])
        if code != 0:
            raise SystemExit(f"training the {name} model failed with exit code {code}")
    return resolve_targets(run_dir)[0]


def bench(ckpt: Path, repeats: int) -> tuple[float, Report]:
    """(seconds of the first call, the fastest report of `repeats` more)."""
    first = verify(ckpt)
    if not first.sound:
        raise SystemExit(first.format())
    best = min((verify(ckpt) for _ in range(repeats)), key=lambda r: r.seconds)
    return first.seconds, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temp directory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--checkpoint", type=Path, nargs="*", default=None, help="time these checkpoints instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        ckpts = args.checkpoint or [make_checkpoint(out, name) for name in MODELS]
        if not args.checkpoint:
            print(f"made {len(ckpts)} checkpoints in {time.perf_counter() - started:.1f}s")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; verify in-process, best of "
              f"{args.repeats} after a first call")
        for ckpt in ckpts:
            first, best = bench(ckpt, args.repeats)
            params = best.checks[2].detail.split(", ")[1]  # "N tensors, P parameters, ..."
            size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 1e6
            print(f"\n{ckpt}: {params}, {size:.1f} MB on disk")
            print(f"  verify: first {first:.2f}s, best {best.seconds:.2f}s")
            for c in best.checks:
                print(f"    {c.name:<13} {c.status:<5} {c.seconds:.3f}s")


if __name__ == "__main__":
    main()
