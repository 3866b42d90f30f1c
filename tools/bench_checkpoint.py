"""Checkpoint figures from real runs: write time and size, training stall with and without async saving,
time from SIGTERM to a durable checkpoint, and time from `resume` to the first new step.

    python tools/bench_checkpoint.py                  # quickstart model and a ~20M-parameter model
    python tools/bench_checkpoint.py --models quickstart
    python tools/bench_checkpoint.py --nproc 2        # 2 gloo processes under torchrun: save stall only

Each figure comes from the run's own metrics.jsonl events (save, save_submitted, preempt_saved,
resume_ready), so it measures what users get.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmtrain.log import read_jsonl

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "quickstart": [],
    # ~20M parameters: 8 layers of width 448 over the quickstart's 2k vocabulary.
    "20M": ["model.n_layer=8", "model.n_embd=448", "model.n_head=7", "train.batch_size=4"],
}


def _run(args: list[str], sets: list[str], nproc: int = 1, **kw) -> subprocess.Popen:
    launcher = [sys.executable] if nproc == 1 else \
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, "-m", "slmtrain", *args, *[a for s in sets for a in ("--set", s)]]
    # One thread per process when several share the cores, as torchrun's default does.
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if nproc > 1 else None
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == name]


def _step_seconds(run_dir: Path) -> float:
    rates = [r["tokens_per_s"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"][2:]
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    tokens_per_step = train[-1]["tokens"] / train[-1]["step"]
    return tokens_per_step / statistics.median(rates)


def bench(name: str, extra: list[str], work: Path, nproc: int = 1) -> None:
    base = [f"data.cache_dir='{(work / 'cache').as_posix()}'", "train.max_steps=12", "checkpoint.every_steps=3",
            "eval.every_steps=0", "eval.samples=0", "log.every_steps=1", "log.progress=false",
            "schedule.warmup_steps=2", *extra]
    recipe = str(REPO / "recipes" / "quickstart.toml")
    for mode in ("sync", "async"):
        run_dir = work / f"{name}-{mode}"
        sets = base + (["checkpoint.async_save=true"] if mode == "async" else [])
        proc = _run(["run", recipe, "--run-dir", str(run_dir)], sets, nproc)
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        saves = _events(run_dir, "save")
        step_s = _step_seconds(run_dir)
        write_s = statistics.median(s["seconds"] for s in saves)
        size = saves[-1]["bytes"]
        if mode == "sync":
            stall = write_s
        else:
            stall = statistics.median(s["stall_seconds"] for s in _events(run_dir, "save_submitted"))
        print(f"{name:10s} {mode:5s} x{nproc} step {1000 * step_s:7.1f} ms | checkpoint {size / 1e6:6.1f} MB written in "
              f"{1000 * write_s:7.1f} ms | training stall per save {1000 * stall:7.1f} ms "
              f"({100 * stall / step_s:5.1f}% of a step)")
    if nproc > 1:
        return
    # Preemption: SIGTERM mid-run, then resume.
    run_dir = work / f"{name}-preempt"
    proc = _run(["run", recipe, "--run-dir", str(run_dir)], base + ["train.max_steps=100000"])
    while not any(r.get("kind") == "train" and r["step"] >= 3 for r in read_jsonl(run_dir / "metrics.jsonl")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate()
    preempted_exit = proc.returncode
    saved = _events(run_dir, "preempt_saved")[0]
    t0 = time.monotonic()
    proc = _run(["resume", str(run_dir)], [])
    while not _events(run_dir, "resume_ready"):
        time.sleep(0.02)
    wall = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.communicate()
    ready = _events(run_dir, "resume_ready")[0]["seconds"]
    print(f"{name:10s} SIGTERM -> durable checkpoint {saved['seconds']:.2f}s (exit {preempted_exit}); resume -> first new step "
          f"{ready:.2f}s in-process, {wall:.2f}s including interpreter start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun, gloo)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            bench(name, MODELS[name], Path(d), args.nproc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
