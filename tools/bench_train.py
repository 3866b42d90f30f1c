"""Training throughput and data-preparation figures.

    python tools/bench_train.py                         # quickstart model: tokens/s, ms/step, overhead share
    python tools/bench_train.py --prepare ../shared/data/tinystories/train.txt --gpt2 ../shared/data/gpt2
    python tools/bench_train.py --run-dir runs/quickstart   # also report a finished run's final figures

"Overhead" is the share of a step's wall time spent outside forward, backward and the optimizer:
fetching the batch from the DataLoader, the host sync for the loss and writing the metrics line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from slmtrain import config
from slmtrain.data.prepare import prepare_data
from slmtrain.data.stream import build_train_loader
from slmtrain.log import MetricsWriter, read_jsonl
from slmtrain.model import GPT
from slmtrain.optim import build_optimizer, build_scheduler
from slmtrain.train import train_step

REPO = Path(__file__).resolve().parents[1]


def bench_steps(recipe: Path, steps: int, warmup: int, cache: Path) -> dict[str, float]:
    cfg = config.load(recipe, [f"data.cache_dir='{cache.as_posix()}'"])
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


def bench_prepare(text: Path, gpt2: Path, cache: Path) -> dict[str, float]:
    cfg = config.loads("", overrides=[
        "data.source='text'", f"data.train='{text.as_posix()}'", "data.valid_fraction=0.01",
        "tokenizer.kind='gpt2'", f"tokenizer.path='{gpt2.as_posix()}'", f"data.cache_dir='{cache.as_posix()}'"])
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, log=lambda _m: None)
    seconds = time.perf_counter() - t0
    mb = text.stat().st_size / 1e6
    return {"MB": mb, "seconds": seconds, "MB_per_s": mb / seconds, "tokens_per_s": prepared.tokens / seconds}


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
    p.add_argument("--prepare", help="a TinyStories-format text file to time `prepare` on")
    p.add_argument("--gpt2", help="GPT-2 tokenizer directory for --prepare")
    p.add_argument("--run-dir", help="a finished run whose final figures to print")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        s = bench_steps(Path(args.recipe), args.steps, args.warmup, Path(d) / "cache")
        print(f"train ({Path(args.recipe).name}, {s['params'] / 1e6:.2f}M params, {torch.get_num_threads()} threads): "
              f"{s['tokens_per_s']:.0f} tokens/s, {s['ms_per_step']:.1f} ms/step, outside fwd/bwd/optim "
              f"{100 * s['overhead_share']:.1f}% (data {s['data_ms_per_step']:.2f} ms/step)")
        if args.prepare:
            r = bench_prepare(Path(args.prepare), Path(args.gpt2), Path(d) / "prep")
            print(f"prepare ({args.prepare}, gpt2): {r['MB']:.2f} MB in {r['seconds']:.2f}s = "
                  f"{r['MB_per_s']:.2f} MB/s, {r['tokens_per_s']:.0f} tokens/s")
    if args.run_dir:
        print(run_figures(Path(args.run_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
