"""Chaos experiment: kill -9 a training run at random moments, resume it each time, compare with an uninterrupted run.

    python tools/chaos.py --kills 50                       # sync saves
    python tools/chaos.py --kills 50 --async-save          # background writer
    python tools/chaos.py --kills 20 --recipe my.toml --set train.max_steps=400
    python tools/chaos.py --kills 20 --budget-minutes 0.3   # a time-budgeted run
    python tools/chaos.py --kills 10 --nproc 2             # a 2-rank job under torchrun (gloo)
    python tools/chaos.py --kills 4 --disk-full            # the disk fills up instead (tools/chaos_diskfull.py)

With a time budget, the killed run fits its own step count; the uninterrupted run it must equal is then
run with that count as train.max_steps (and no budget), as a user reproduces a budgeted run.

With --nproc N every attempt runs under torchrun with N gloo ranks, and the uninterrupted run has N ranks
too. A kill is then kill -9 of one random rank (torchrun stops the others), kill -9 of the whole job (the
agent and every rank at once), or SIGTERM to one random rank (the ranks agree, save one whole checkpoint
and exit 75; the job must end preempted or, if the signal came too late to matter, finished).

Prints one row per kill: the moment (a random time during start-up, or a random offset after a random
step), whether a checkpoint directory was being written (`saving`: a `*.tmp-*` directory existed), and
the newest sound checkpoint the next attempt resumes from. Then the verdict: every resume must succeed,
never load a torn checkpoint, and the final weights and every logged loss must equal the uninterrupted
run's bit for bit. Exit 0 when they do, 1 otherwise.
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
from typing import TextIO

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


def job_cmd(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "slmtrain", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "slmtrain", *args]


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


def saving_now(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any(".tmp-" in p.name for p in root.iterdir())


def newest_committed(run_dir: Path) -> int | None:
    return max((c.step for c in list_checkpoints(run_dir / "checkpoints") if c.committed), default=None)


def _still_running_after(proc: subprocess.Popen, seconds: float, label: str) -> str | None:
    """`label` if the process is still running after `seconds` (time to kill it), None if it ended."""
    try:
        proc.wait(timeout=seconds)
        return None
    except subprocess.TimeoutExpired:
        return label


def _planned_steps(run_dir: Path, default: int) -> int:
    """The step count a time budget fixed (run.json), or `default` before it is fixed."""
    try:
        return int(read_json(run_dir / "run.json").get("planned_steps") or default)
    except (OSError, ValueError):
        return default


def _wait_for_kill_moment(proc: subprocess.Popen, run_dir: Path, rng: random.Random, max_steps: int,
                          started: float, kills_left: int) -> str | None:
    """Sleep until a random moment of this attempt; None if the process ended first.

    One kill in five lands at a random time during start-up (imports, data, restore); the others at a
    random offset after a random step this attempt reaches, so kills fall inside steps and saves alike.
    """
    if rng.random() < 0.2:
        delay = rng.uniform(0.1, 2.5)
        return _still_running_after(proc, delay, f"start+{delay:.2f}s")
    base = newest_committed(run_dir) or 0
    share = rng.random()
    while proc.poll() is None:
        # Spread the remaining kills over the remaining steps, so the run does not end before they all
        # land. A budgeted run fixes its count only after a few steps, so the target follows that count.
        last = _planned_steps(run_dir, max_steps)
        reach = max(1, 2 * (last - 1 - base) // (kills_left + 1))
        target = min(base + 1 + int(share * reach), last - 1)
        fresh = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")
                 if r.get("kind") == "train" and r.get("time", 0) >= started]
        if fresh and max(fresh) >= target:
            offset = rng.uniform(0.0, 0.15)
            return _still_running_after(proc, offset, f"step {target}+{offset:.2f}s")
        time.sleep(0.005)
    return None


def reference_run(recipe: Path, ref_dir: Path, sets: list[str], steps: int, out: TextIO, nproc: int = 1) -> None:
    t0 = time.monotonic()
    subprocess.run(job_cmd(nproc, "run", str(recipe), "--run-dir", str(ref_dir), *sets), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"reference run: {time.monotonic() - t0:.1f}s, {steps} steps" + (f", {nproc} ranks" if nproc > 1 else ""),
          file=out)


def same_run(ref_dir: Path, chaos_dir: Path) -> tuple[bool, bool]:
    """(final weights equal, every logged loss equal) between two run directories, bit for bit."""
    ref, got = final_weights(ref_dir), final_weights(chaos_dir)
    same = ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    return same, train_losses(ref_dir) == train_losses(chaos_dir)


def run_experiment(recipe: Path, workdir: Path, kills: int, overrides: list[str], seed: int,
                   out: TextIO = sys.stdout, budget_minutes: float = 0.0, nproc: int = 1) -> bool:
    """Kill a run `kills` times at random moments, resume it each time, compare it with an uninterrupted run.

    Args:
        nproc: processes per attempt: 1 runs `python -m slmtrain`; more run torchrun with that many gloo ranks
            (the uninterrupted run too), and each kill is one of `chaos_multirank.strike`'s faults.

    Returns:
        True when every attempt but the killed ones exited 0 and the final weights and every logged loss
        equal the uninterrupted run's bit for bit.
    """
    from slmtrain import config

    if budget_minutes:
        # Exactness, not timing, is under test: a slow attempt must not cut the fitted schedule short.
        budget = [f"train.max_minutes={budget_minutes}", "train.budget_overrun=10.0"]
    else:
        budget = []
    sets = [a for o in overrides for a in ("--set", o)]
    chaos_sets = sets + [a for o in budget for a in ("--set", o)]
    # Until a budgeted run has fitted its count, kills are spread as if it were this long.
    max_steps = config.load(recipe, overrides + budget).train.max_steps or 200
    ref_dir, chaos_dir = workdir / "reference", workdir / "chaos"
    if budget_minutes:
        print(f"time budget: {budget_minutes} minutes of training", file=out)
    else:
        reference_run(recipe, ref_dir, sets, max_steps, out, nproc)
    print(f"{'kill':>4} {'moment':>16} {'fault':>14} {'saving':>6} {'newest_sound':>12}", file=out)
    rng = random.Random(seed)
    ok, done, attempt = True, 0, 0
    log_path = workdir / "chaos-attempts.log"
    while ok:
        first = not (chaos_dir / "run.json").exists()  # killed before the run directory was set up
        args = job_cmd(nproc, "run", str(recipe), "--run-dir", str(chaos_dir), *chaos_sets) if first else \
            job_cmd(nproc, "resume", str(chaos_dir), *chaos_sets)
        attempt += 1
        with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the child
            started = time.time()
            # Its own session, so that a kill of the whole job reaches torchrun's agent and nothing else.
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=nproc > 1)
            moment = _wait_for_kill_moment(proc, chaos_dir, rng, max_steps, started, kills - done) \
                if done < kills else None
            if moment is not None:
                saving = saving_now(chaos_dir)
                if nproc == 1:
                    fault = "kill -9"
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                else:
                    from chaos_multirank import strike

                    fault, problem = strike(proc, chaos_dir, rng, startup=moment.startswith("start"))
                    if problem:
                        print(f"attempt {attempt}, after {fault}: {problem}\n{log_path.read_text()[-2000:]}",
                              file=out)
                        ok = False
                done += 1
                print(f"{done:>4} {moment:>16} {fault:>14} {'yes' if saving else 'no':>6} "
                      f"{str(newest_committed(chaos_dir)):>12}", file=out)
                continue
            proc.wait()
        if proc.returncode != 0:
            print(f"attempt {attempt} exited {proc.returncode}:\n{log_path.read_text()[-2000:]}", file=out)
            ok = False
        break
    if ok and budget_minutes:
        planned = _planned_steps(chaos_dir, 0)
        print(f"fitted step count: {planned}", file=out)
        ok = planned > 0
        if ok:
            reference_run(recipe, ref_dir, sets + ["--set", f"train.max_steps={planned}"], planned, out, nproc)
    if ok:
        same, same_losses = same_run(ref_dir, chaos_dir)
        print(f"kills: {done}  attempts: {attempt}  final weights equal: {same}  losses equal: {same_losses}", file=out)
        ok = same and same_losses and done == kills
    print("PASS" if ok else "FAIL", file=out)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--recipe", help="recipe to torture (default: a tiny built-in one)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--async-save", action="store_true", help="use the background checkpoint writer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="give the killed run this time budget (train.max_minutes) instead of a step count")
    p.add_argument("--nproc", type=int, default=1,
                   help="ranks per attempt: more than 1 runs each attempt under torchrun with gloo")
    p.add_argument("--disk-full", nargs="?", const="auto", choices=("auto", "tmpfs", "fsize"),
                   help="fill the disk --kills times instead of killing (tools/chaos_diskfull.py): a small tmpfs "
                   "(needs root), or emulated with RLIMIT_FSIZE (fsize); auto: tmpfs when it can be mounted")
    p.add_argument("--keep", help="keep the run directories here instead of a temporary directory")
    args = p.parse_args()
    if args.nproc < 1 or (args.disk_full and (args.nproc > 1 or args.budget_minutes)):
        p.error("--nproc must be >= 1, and --disk-full runs one process without a time budget")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="slmtrain-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = Path(args.recipe) if args.recipe else workdir / "chaos.toml"
    if not args.recipe:
        recipe.write_text(CHAOS_RECIPE.format(cache=(workdir / "cache").as_posix()))
    # The built-in run is long enough that every kill (or fill, each up to three saves on) lands before it ends.
    length = [] if args.recipe else [f"train.max_steps={max(60, (10 if args.disk_full else 8) * args.kills)}"]
    if args.budget_minutes:
        # The budget fits the count (max_steps only caps it); warmup outlasts the timing probe.
        length = [] if args.recipe else ["train.max_steps=0", "schedule.warmup_steps=20", "train.budget_probe_steps=8"]
    overrides = length + args.overrides + (["checkpoint.async_save=true"] if args.async_save else [])
    try:
        if args.disk_full:
            from chaos_diskfull import run_diskfull_experiment

            return 0 if run_diskfull_experiment(recipe, workdir, args.kills, overrides, args.seed,
                                                how=args.disk_full) else 1
        return 0 if run_experiment(recipe, workdir, args.kills, overrides, args.seed,
                                   budget_minutes=args.budget_minutes, nproc=args.nproc) else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
