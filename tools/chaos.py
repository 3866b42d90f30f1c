"""Chaos experiment: kill -9 a training run at random moments, resume it each time, compare with an uninterrupted run.

    python tools/chaos.py --kills 50                       # sync saves
    python tools/chaos.py --kills 50 --async-save          # background writer
    python tools/chaos.py --kills 20 --recipe my.toml --set train.max_steps=400

Prints one row per kill (when, what the run was doing, which checkpoint the resume took) and a verdict:
every resume must succeed, never load a torn checkpoint, and the final weights must equal the
uninterrupted run's bit for bit. Exit 0 when they do, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slmtrain.checkpoint import find_resume, list_checkpoints, load_app_state
from slmtrain.fsio import read_json
from slmtrain.log import read_jsonl

CHAOS_RECIPE = """
[run]
name = "chaos"
seed = 11
device = "cpu"
[data]
builtin_train_stories = 300
builtin_valid_stories = 50
cache_dir = "{cache}"
[tokenizer]
vocab_size = 384
train_documents = 300
[model]
n_layer = 2
n_head = 2
n_embd = 64
seq_len = 64
dropout = 0.1
[schedule]
warmup_steps = 5
[train]
batch_size = 4
grad_accum = 2
max_steps = 60
[eval]
every_steps = 15
batches = 2
samples = 0
[checkpoint]
every_steps = 3
keep_last = 2
reference_tokens = 4
[log]
every_steps = 1
progress = false
"""


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "slmtrain", *args]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = find_resume(run_dir / "checkpoints", log=lambda _m: None)
    if ckpt is None:
        raise RuntimeError(f"{run_dir}: no sound checkpoint")
    meta = read_json(ckpt / "meta.json")
    from slmtrain import config
    from slmtrain.model import GPT

    model = GPT(config.from_dict(read_json(ckpt / "config.json")["recipe"]).model)
    state = {"model": model.state_dict()}
    load_app_state(ckpt, state)
    return {"step": torch.tensor(meta["step"]), **state["model"]}


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"}


def _saving_now(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(".tmp-" in p.name for p in root.iterdir())


def run_experiment(recipe: Path, workdir: Path, kills: int, overrides: list[str], seed: int,
                   max_delay: float, out=sys.stdout) -> bool:
    sets = [a for o in overrides for a in ("--set", o)]
    ref_dir, chaos_dir = workdir / "reference", workdir / "chaos"
    t0 = time.monotonic()
    subprocess.run(_cmd("run", str(recipe), "--run-dir", str(ref_dir), *sets), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref_seconds = time.monotonic() - t0
    rng = random.Random(seed)
    print(f"reference run: {ref_seconds:.1f}s", file=out)
    print(f"{'kill':>4} {'after_s':>7} {'saving':>6} {'resumed_from':>14} {'exit':>4}", file=out)
    ok = True
    done = 0
    attempt = 0
    while True:
        first = not (chaos_dir / "run.json").exists()  # killed before the run directory was set up
        args = _cmd("run", str(recipe), "--run-dir", str(chaos_dir), *sets) if first else \
            _cmd("resume", str(chaos_dir), *sets)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        attempt += 1
        if done < kills:
            delay = rng.uniform(0.5, max_delay)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                saving = _saving_now(chaos_dir)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                done += 1
                ckpts = list_checkpoints(chaos_dir / "checkpoints")
                newest = max((c.step for c in ckpts if c.committed), default=None)
                print(f"{done:>4} {delay:>7.2f} {'yes' if saving else 'no':>6} {str(newest):>14} {'-9':>4}", file=out)
                continue
            err = proc.stderr.read() if proc.stderr else ""
        else:
            err = proc.communicate()[1]
        if proc.returncode != 0:
            print(f"attempt {attempt} exited {proc.returncode}:\n{err[-2000:]}", file=out)
            ok = False
            break
        if "sha256 mismatch" in err or "Traceback" in err:
            print(f"attempt {attempt} reported:\n{err[-2000:]}", file=out)
        break
    if ok:
        ref, got = final_weights(ref_dir), final_weights(chaos_dir)
        same = ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
        same_losses = train_losses(ref_dir) == train_losses(chaos_dir)
        print(f"kills: {done}  attempts: {attempt}  final weights equal: {same}  losses equal: {same_losses}", file=out)
        ok = same and same_losses
    print("PASS" if ok else "FAIL", file=out)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--recipe", help="recipe to torture (default: a tiny built-in one)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--async-save", action="store_true", help="use the background checkpoint writer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=6.0, help="longest wait before a kill, seconds")
    p.add_argument("--keep", help="keep the run directories here instead of a temporary directory")
    args = p.parse_args()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="slmtrain-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = Path(args.recipe) if args.recipe else workdir / "chaos.toml"
    if not args.recipe:
        recipe.write_text(CHAOS_RECIPE.format(cache=(workdir / "cache").as_posix()))
    overrides = args.overrides + (["checkpoint.async_save=true"] if args.async_save else [])
    try:
        return 0 if run_experiment(recipe, workdir, args.kills, overrides, args.seed, args.max_delay) else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
