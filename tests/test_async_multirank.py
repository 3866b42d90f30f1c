"""Background (async) checkpoint saves in a two-process job under torchrun (gloo, CPU): the same numbers as
synchronous saves, sound checkpoints, and exact resume after kill -9 while a save is in flight."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import train_losses
from test_multirank import _same_as, _sets, _torchrun, setup  # noqa: F401 - setup is a fixture

from slmtrain.checkpoint import list_checkpoints, read_rank_state
from slmtrain.log import read_jsonl
from slmtrain.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from chaos_multirank import rank_pids  # noqa: E402

ASYNC = ("checkpoint.async_save=true", "checkpoint.every_steps=2")


def _saving(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    try:
        return any(".tmp-" in name for name in os.listdir(root))
    except FileNotFoundError:
        return False


def _all_sound(run_dir: Path) -> None:
    committed = [c for c in list_checkpoints(run_dir / "checkpoints") if c.committed]
    assert committed
    for c in committed:
        report = verify(c.path)
        assert report.sound, report.format()


def test_async_saves_on_two_ranks_change_nothing(setup: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, ref = setup
    run_dir = tmp_path / "async"
    proc = _torchrun(recipe, run_dir, *_sets(*ASYNC))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    submitted = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "save_submitted"]
    saved = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "save"]
    assert len(submitted) >= 15, "the periodic saves ran in the background"
    assert {r["step"] for r in submitted} <= {r["step"] for r in saved}, "every background save committed"
    _same_as(ref, run_dir)
    _all_sound(run_dir)


@pytest.mark.parametrize("victim", ["rank1", "job"])
def test_kill_9_during_an_async_two_rank_save_then_resume_is_exact(setup: tuple[Path, Path], tmp_path: Path,
                                                                   victim: str) -> None:
    recipe, ref = setup
    run_dir = tmp_path / "killed"
    proc = _torchrun(recipe, run_dir, *_sets(*ASYNC))
    deadline = time.monotonic() + 300
    # A save counts as in flight once its temporary directory exists and the run is past its first commit.
    while not (_saving(run_dir) and any(c.committed for c in list_checkpoints(run_dir / "checkpoints"))):
        assert proc.poll() is None, "the job ended before a background save could be caught in flight: " \
                                    + proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.001)
    if victim == "job":
        os.killpg(proc.pid, signal.SIGKILL)  # agent and both ranks at once, as a lost machine
    else:
        os.kill(rank_pids(proc.pid)[1], signal.SIGKILL)
    started = time.monotonic()
    proc.communicate(timeout=120)
    ended = time.monotonic() - started
    assert proc.returncode != 0
    assert ended < 60, f"the job took {ended:.1f}s to end after a rank died"
    _all_sound(run_dir)  # the save that was cut off is a temporary directory, never a torn checkpoint
    again = _torchrun(recipe, run_dir, *_sets(*ASYNC), "--resume")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "unfinished save" in err or not _saving(run_dir)
    _same_as(ref, run_dir)
    _all_sound(run_dir)
    assert max(train_losses(run_dir)) == 40
    final = "checkpoints/step_00000040"
    for rank in (0, 1):
        assert read_rank_state(run_dir / final, rank)["loader"] == read_rank_state(ref / final, rank)["loader"]


def test_async_saves_of_a_sharded_fsdp2_model_equal_synchronous_ones(setup: tuple[Path, Path], tmp_path: Path) -> None:
    # FSDP2 shards are written from the background like DDP's; only the reference outputs (the sharded
    # forward) are computed before the copy.
    recipe, _ = setup
    runs = {}
    for name, extra in (("sync", ()), ("async", ASYNC)):
        runs[name] = tmp_path / name
        proc = _torchrun(recipe, runs[name], *_sets("parallel.strategy='fsdp'", *extra))
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert any(r.get("event") == "save_submitted" for r in read_jsonl(runs["async"] / "metrics.jsonl"))
    _same_as(runs["sync"], runs["async"])
    _all_sound(runs["async"])
