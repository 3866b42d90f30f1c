"""Faults in a two-process job under torchrun (gloo, CPU): a signal to one rank, a rank killed by the kernel,
and a job restarted by `torchrun --max-restarts`, each ending exactly where an uninterrupted job ends, or
cleanly."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from helpers import events, run_cli, train_losses, write_recipe

from slmtrain.checkpoint import list_checkpoints
from slmtrain.dist import DistInfo, attempt_store
from slmtrain.errors import SlmError
from slmtrain.fsio import read_json
from slmtrain.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from chaos import final_weights  # noqa: E402
from chaos_multirank import rank_pids  # noqa: E402

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


def _wait_step(run_dir: Path, step: int, agent: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.poll() is None, agent.communicate()[1][-3000:]
        if (run_dir / "metrics.jsonl").exists() and train_losses(run_dir) and max(train_losses(run_dir)) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def test_ranks_of_a_restarted_job_never_take_a_dead_attempts_namespace_and_meet_in_a_fresh_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A real TCPStore standing in for torchrun's agent store, still holding what a killed attempt wrote.
    agent = tdist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    agent.set("slmtrain/attempt", "0123456789abcdef")
    with pytest.raises(SlmError, match="rank 1 got no answer from rank 0 within parallel.timeout_seconds = 1s"):
        attempt_store(DistInfo(rank=1, world_size=2), datetime.timedelta(seconds=1))
    heard: dict[int, bytes] = {}

    def rank(r: int) -> None:
        store = attempt_store(DistInfo(rank=r, world_size=2), datetime.timedelta(seconds=30))
        store.set(f"hello/{r}", str(r))
        heard[r] = store.get(f"hello/{1 - r}")  # found only if both ranks use the same namespace

    late = threading.Thread(target=rank, args=(0,))
    early = threading.Thread(target=rank, args=(1,))
    early.start()  # rank 1 first: it reads the dead attempt's name before rank 0 writes a new one
    time.sleep(0.3)
    late.start()
    early.join(60)
    late.join(60)
    assert heard == {0: b"1", 1: b"0"}


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
    pids = rank_pids(agent.pid)
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
    os.kill(rank_pids(agent.pid)[1], signal.SIGKILL)
    _, err = agent.communicate(timeout=180)
    seconds = time.monotonic() - killed
    assert agent.returncode != 0 and seconds < 90, (seconds, err[-2000:])
    assert "Signal 9" in err or "SIGKILL" in err or "exitcode  : -9" in err, err[-3000:]
    print(f"kill -9 of rank 1: the job ended {seconds:.2f}s later")
    # Whatever the survivors managed, nothing torn is trusted: the newest sound checkpoint verifies.
    sound = [c for c in list_checkpoints(run / "checkpoints") if c.committed]
    assert sound and verify(sound[-1].path).sound


@pytest.mark.parametrize("victim", [0, 1])
def test_max_restarts_restarts_the_job_which_resumes_by_itself_and_ends_like_an_uninterrupted_one(
        setup: tuple[Path, Path], tmp_path: Path, victim: int) -> None:
    recipe, ref = setup
    run = tmp_path / "run"
    agent = _torchrun(recipe, run, *_sets(), "--resume", restarts=1)
    _wait_step(run, 13, agent)
    assert 10 in [c.step for c in list_checkpoints(run / "checkpoints") if c.committed]
    killed = time.time()
    os.kill(rank_pids(agent.pid)[victim], signal.SIGKILL)
    _, err = agent.communicate(timeout=600)
    assert agent.returncode == 0, err[-3000:]
    # The restarted workers formed their group, took the lock and resumed from a checkpoint, once.
    ready = events(run, "resume_ready")
    assert len(ready) == 1 and ready[0]["step"] >= 10, err[-3000:]
    attempts = read_json(run / "run.json")["attempts"]
    assert [a["kind"] for a in attempts] == ["run", "resume"] and attempts[-1]["exit_code"] == 0
    print(f"kill -9 of rank {victim} under --max-restarts 1: first new step {ready[0]['time'] - killed:.2f}s "
          f"later, from step {ready[0]['step']}")
    _same_as(ref, run)


def test_chaos_under_torchrun_kills_ranks_and_whole_jobs_and_every_resume_is_exact(tmp_path: Path,
                                                                                   cache: Path) -> None:
    from chaos import CHAOS_RECIPE, run_experiment

    recipe = tmp_path / "chaos.toml"
    recipe.write_text(CHAOS_RECIPE.format(cache=cache.as_posix()))
    overrides = ["train.max_steps=24", "log.curves=false", "parallel.timeout_seconds=30"]
    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        ok = run_experiment(recipe, tmp_path, kills=3, overrides=overrides, seed=37, out=out, nproc=2)
    report = log.read_text()
    assert ok, report
    assert "kills: 3 " in report, report
    # This seed deals each kind of fault once: SIGTERM to rank 0, kill -9 of the job, kill -9 of rank 1.
    assert all(fault in report for fault in ("rank 0 TERM", "job -9", "rank 1 -9")), report
