"""Training throughput and data-preparation figures.

    python tools/bench_train.py                         # quickstart model: tokens/s, ms/step, overhead share
    python tools/bench_train.py --run-dir runs/quickstart   # also report a finished run's final figures
    python tools/bench_train.py --prepare ../shared/data/tinystories/train.txt --gpt2 ../shared/data/gpt2 \
        --bpe-vocab 4096 --reps 5 [--baseline ../old-checkout] [--idle-wait 60]   # `prepare` MB/s only

"Overhead" is the share of a step's wall time spent outside forward, backward and the optimizer:
fetching the batch from the DataLoader, the host sync for the loss and writing the metrics line.

`prepare` figures are end to end (fingerprints, reading and splitting, loading the tokenizer, encoding and
writing both splits; 1% held out as validation) in a fresh process and an empty cache, as MB of the text
file per second. The trained BPE (`--bpe-vocab`, as the TinyStories recipe trains it) is trained once,
timed apart, then given to `prepare` as a tokenizer file, so its figure is tokenization alone. With
`--baseline`, every repetition runs this checkout, then the other one (A, B, A, B ...): medians and
[min-max] side by side, on the same loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slmtrain import config
from slmtrain.data.prepare import prepare_data
from slmtrain.data.sources import load_splits
from slmtrain.data.stream import WindowLoader, build_train_loader
from slmtrain.data.tokenizer import build_tokenizer
from slmtrain.log import MetricsWriter, read_jsonl
from slmtrain.model import GPT
from slmtrain.optim import build_optimizer, build_scheduler
from slmtrain.train import train_step

REPO = Path(__file__).resolve().parents[1]


def build_pipeline(recipe: Path, cache: Path, overrides: list[str] | None = None) -> tuple[
        config.Config, GPT, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, WindowLoader]:
    """A recipe's model, optimizer, scheduler and training loader on CPU, built from the pieces `slmtrain run` uses."""
    cfg = config.load(recipe, [f"data.cache_dir='{cache.as_posix()}'", *(overrides or [])])
    prepared = prepare_data(cfg, log=lambda _m: None)
    vocab = config.embedding_rows(cfg.model.vocab_size, prepared.tokenizer.vocab_size)
    cfg = cfg.replace("model", vocab_size=vocab)
    torch.manual_seed(cfg.run.seed)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.optim, "cpu")
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    t = cfg.train
    loader = build_train_loader(prepared.train_path, cfg.model.seq_len, t.batch_size, cfg.run.seed, 0, 1,
                                t.grad_accum, cfg.data.loader_workers)
    return cfg, model, optimizer, scheduler, loader


def bench_steps(recipe: Path, steps: int, warmup: int, cache: Path) -> dict[str, float]:
    cfg, model, optimizer, scheduler, loader = build_pipeline(recipe, cache)
    t = cfg.train
    data_time = [0.0]
    raw = iter(loader)

    def timed():
        while True:
            t0 = time.perf_counter()
            batch = next(raw)
            data_time[0] += time.perf_counter() - t0
            yield batch

    batches = timed()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as d:
        metrics = MetricsWriter(Path(d) / "m.jsonl")
        wall = step_time = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                data_time[0] = 0.0
            t0 = time.perf_counter()
            stats = train_step(model, batches, optimizer, scheduler, grad_accum=t.grad_accum,
                               grad_clip=cfg.optim.grad_clip, device=device, precision="fp32")
            t1 = time.perf_counter()
            metrics.write("train", step=i, loss=stats.loss.item(), lr=stats.lr)  # what a log step costs
            t2 = time.perf_counter()
            if i >= warmup:
                step_time += t1 - t0
                wall += t2 - t0
        metrics.close()
    tokens = steps * t.batch_size * t.grad_accum * cfg.model.seq_len
    compute = step_time - data_time[0]
    return {"params": model.num_params(), "tokens_per_s": tokens / wall, "ms_per_step": 1000 * wall / steps,
            "overhead_share": (wall - compute) / wall, "data_ms_per_step": 1000 * data_time[0] / steps}


# Run in a fresh interpreter with PYTHONPATH at the checkout to measure; it uses only `config.loads` and
# `prepare_data`, so it runs against older checkouts too.
_PREPARE_ONCE = """
import json, sys, tempfile, time
from slmtrain import config
from slmtrain.data.prepare import prepare_data
text, tokenizer = sys.argv[1:3]
with tempfile.TemporaryDirectory() as cache:
    cfg = config.loads("", overrides=[
        "data.source='text'", f"data.train='{text}'", "data.valid_fraction=0.01", "tokenizer.kind='gpt2'",
        f"tokenizer.path='{tokenizer}'", f"data.cache_dir='{cache}'"])
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, log=lambda _m: None)
    print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": prepared.tokens}))
"""


def prepare_once(text: Path, tokenizer: Path, checkout: Path = REPO) -> dict[str, float]:
    """One end-to-end `prepare` of `text` with `tokenizer` (a GPT-2 directory or a tokenizer.json), by `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", _PREPARE_ONCE, str(text.resolve()), str(tokenizer.resolve())],
                         env=env, cwd=checkout, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.splitlines()[-1])
    mb = text.stat().st_size / 1e6
    return {"MB": mb, "seconds": r["seconds"], "MB_per_s": mb / r["seconds"],
            "tokens_per_s": r["tokens"] / r["seconds"]}


def train_recipe_bpe(text: Path, vocab_size: int, out: Path) -> tuple[Path, float]:
    """The BPE the recipes train (on all of `text` but the held-out 1%), saved as out/tokenizer.json, and its
    training seconds."""
    cfg = config.loads("", overrides=[
        "data.source='text'", f"data.train='{text.as_posix()}'", "data.valid_fraction=0.01", "tokenizer.kind='bpe'",
        f"tokenizer.vocab_size={vocab_size}", "tokenizer.train_documents=0"])
    docs = load_splits(cfg.data)["train"]
    t0 = time.perf_counter()
    tok = build_tokenizer(cfg.tokenizer, docs)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    return out / "tokenizer.json", seconds


def _cpu_idle_share(seconds: float) -> float:
    """Share of all CPUs' time idle over the next `seconds` (Linux /proc/stat); 1.0 where it cannot tell."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all
    try:
        idle0, all0 = sample()
        time.sleep(seconds)
        idle1, all1 = sample()
    except (OSError, ValueError, IndexError):
        return 1.0
    return (idle1 - idle0) / max(1, all1 - all0)


def wait_for_idle(timeout: float, share: float = 0.9) -> bool:
    """Wait up to `timeout` seconds for a half second with `share` of the CPUs idle; whether one came."""
    deadline = time.monotonic() + timeout
    while _cpu_idle_share(0.5) < share:
        if time.monotonic() > deadline:
            return False
    return True


def bench_prepare(text: Path, tokenizers: dict[str, Path], reps: int, baseline: Path | None = None,
                  idle_wait: float = 0.0) -> tuple[dict[str, dict[str, list[float]]], int]:
    """MB/s per repetition for each named tokenizer, for this checkout ("this") and `baseline`, alternating,
    and how many runs started on a busy machine.

    With `idle_wait` each run first waits up to that many seconds for idle CPUs: a shared machine's other
    jobs move the figures by a factor of two, alternating evens that out but hides the quiet figure.
    """
    checkouts = {"this": REPO} | ({"baseline": baseline} if baseline else {})
    figures: dict[str, dict[str, list[float]]] = {name: {c: [] for c in checkouts} for name in tokenizers}
    busy = 0
    for _ in range(reps):
        for name, tokenizer in tokenizers.items():
            for c, root in checkouts.items():
                if idle_wait and not wait_for_idle(idle_wait):
                    busy += 1
                figures[name][c].append(prepare_once(text, tokenizer, root)["MB_per_s"])
    return figures, busy


def spread(xs: list[float]) -> str:
    """Median [min-max] to two decimals."""
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def run_figures(run_dir: Path) -> str:
    records = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in records if r.get("kind") == "eval"]
    summary = next((r for r in reversed(records) if r.get("event") == "summary"), {})
    if not evals:
        return f"{run_dir}: no evaluation recorded"
    e = evals[-1]
    return (f"{run_dir}: step {e['step']} val_loss {e['val_loss']:.4f} ppl {e['val_ppl']:.3f} "
            f"bpb {e['val_bpb']:.4f} wall {summary.get('wall_seconds', float('nan')):.0f}s\n"
            f"sample: {summary.get('sample', '')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart.toml"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prepare", help="a TinyStories-format text file: time `prepare` on it (and skip training)")
    p.add_argument("--gpt2", help="GPT-2 tokenizer directory for --prepare")
    p.add_argument("--bpe-vocab", type=int, default=0, help="also time a BPE of this size trained on the file")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each --prepare measurement")
    p.add_argument("--baseline", help="another slmtrain checkout to time --prepare against, alternating")
    p.add_argument("--idle-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each --prepare run, wait up to this long for idle CPUs (shared machines)")
    p.add_argument("--run-dir", help="a finished run whose final figures to print")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.prepare:
            text = Path(args.prepare)
            tokenizers = {"gpt2": Path(args.gpt2)} if args.gpt2 else {}
            if args.bpe_vocab:
                path, seconds = train_recipe_bpe(text, args.bpe_vocab, Path(d) / "bpe")
                print(f"trained the {args.bpe_vocab}-token BPE on {text} in {seconds:.2f}s")
                tokenizers[f"bpe-{args.bpe_vocab}"] = path
            figures, busy = bench_prepare(text, tokenizers, args.reps, Path(args.baseline) if args.baseline else None,
                                          args.idle_wait)
            waited = f", {busy} run(s) found no idle moment" if args.idle_wait else ""
            print(f"prepare {text} ({text.stat().st_size / 1e6:.2f} MB, {os.cpu_count()} CPUs), MB/s "
                  f"end to end, median [min-max] of {args.reps}{waited}:")
            for name, by_checkout in figures.items():
                print(f"  {name:10s} " + " | ".join(f"{c} {spread(xs)}" for c, xs in by_checkout.items()))
        else:
            s = bench_steps(Path(args.recipe), args.steps, args.warmup, Path(d) / "cache")
            print(f"train ({Path(args.recipe).name}, {s['params'] / 1e6:.2f}M params, {torch.get_num_threads()} "
                  f"threads): {s['tokens_per_s']:.0f} tokens/s, {s['ms_per_step']:.1f} ms/step, outside "
                  f"fwd/bwd/optim {100 * s['overhead_share']:.1f}% (data {s['data_ms_per_step']:.2f} ms/step)")
    if args.run_dir:
        print(run_figures(Path(args.run_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
