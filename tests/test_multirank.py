"""Faults in a two-process job under torchrun (gloo, CPU): a signal to one rank, a rank killed by the kernel,
each ending exactly where an uninterrupted job ends, or cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli, train_losses, write_recipe

from slmtrain.checkpoint import list_checkpoints
from slmtrain.fsio import read_json
from slmtrain.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from chaos import final_weights  # noqa: E402

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
SETS = ["train.max_steps=40", "train.batch_size=8", "checkpoint.every_steps=10", "eval.every_steps=20",
        "log.every_steps=1", "log.curves=false", "parallel.timeout_seconds=30"]


def _sets(*extra: str) -> list[str]:
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def _torchrun(recipe: Path, run_dir: Path, *args: str, restarts: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--max-restarts", str(restarts), "-m", "slmtrain",
           "run", str(recipe), "--run-dir", str(run_dir), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _rank_pids(agent: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes, read from their environment."""
    pids = {}
    out = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                pids[int(kv[5:])] = pid
    return pids


def _wait_step(run_dir: Path, step: int, agent: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.poll() is None, agent.communicate()[1][-3000:]
        if (run_dir / "metrics.jsonl").exists() and train_losses(run_dir) and max(train_losses(run_dir)) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("multirank")
    recipe = write_recipe(tmp, tmp / "cache")
    assert run_cli("prepare", str(recipe)).returncode == 0
    ref = tmp / "reference"
    proc = _torchrun(recipe, ref, *_sets())
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return recipe, ref


def _same_as(ref: Path, run: Path) -> None:
    assert train_losses(run) == train_losses(ref)
    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("target", ["rank0", "rank1", "both"])
def test_sigterm_to_one_rank_or_all_saves_one_whole_checkpoint_and_resumes_exactly(
        setup: tuple[Path, Path], tmp_path: Path, target: str) -> None:
    recipe, ref = setup
    run = tmp_path / "run"
    agent = _torchrun(recipe, run, *_sets())
    _wait_step(run, 12, agent)
    pids = _rank_pids(agent)
    assert sorted(pids) == [0, 1]
    sent = time.monotonic()
    if target == "both":  # at different moments
        os.kill(pids[1], signal.SIGTERM)
        time.sleep(0.05)
        try:
            os.kill(pids[0], signal.SIGTERM)
        except ProcessLookupError:
            pass  # rank 0 already saved and exited on the first signal: the second had nothing to do
    else:
        os.kill(pids[int(target[-1])], signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    seconds = time.monotonic() - sent
    assert agent.returncode != 0  # torchrun reports its workers' exit 75
    assert "exitcode  : 75" in err or "exit code 75" in err or "75" in err, err[-3000:]
    status = read_json(run / "run.json")
    assert status["status"] == "preempted" and status["attempts"][-1]["exit_code"] == 75
    stopped = max(train_losses(run))
    last = [c for c in list_checkpoints(run / "checkpoints") if c.committed][-1]
    assert last.step == stopped and last.meta["world_size"] == 2
    assert verify(last.path).sound
    assert seconds < 60, f"{seconds:.1f}s from SIGTERM to every rank's exit"
    print(f"SIGTERM to {target}: all ranks exited {seconds:.2f}s later, checkpoint at step {stopped}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resumed = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "slmtrain", "resume",
                              str(run)], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_as(ref, run)


def test_a_rank_killed_by_the_kernel_ends_the_job_in_bounded_time(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, _ = setup
    run = tmp_path / "run"
    agent = _torchrun(recipe, run, *_sets("train.max_steps=400"))
    _wait_step(run, 12, agent)
    killed = time.monotonic()
    os.kill(_rank_pids(agent)[1], signal.SIGKILL)
    _, err = agent.communicate(timeout=180)
    seconds = time.monotonic() - killed
    assert agent.returncode != 0 and seconds < 90, (seconds, err[-2000:])
    assert "Signal 9" in err or "SIGKILL" in err or "exitcode  : -9" in err, err[-3000:]
    print(f"kill -9 of rank 1: the job ended {seconds:.2f}s later")
    # Whatever the survivors managed, nothing torn is trusted: the newest sound checkpoint verifies.
    sound = [c for c in list_checkpoints(run / "checkpoints") if c.committed]
    assert sound and verify(sound[-1].path).sound
