"""Two real processes under torchrun (gloo, CPU): DDP and FSDP2 training, a multi-rank checkpoint, resharding on resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, train_losses, write_recipe

from slmtrain import cli
from slmtrain.checkpoint import list_checkpoints

EXTRA = ["--set", "train.max_steps=20", "--set", "checkpoint.every_steps=10", "--set", "eval.every_steps=10",
         "--set", "log.every_steps=1"]


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun is not installed beside this Python")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_rank_with_accumulation_and_reshard_on_resume(tmp_path: Path, strategy: str) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "cache")
    assert run_cli("prepare", str(recipe)).returncode == 0  # both launches then reuse one cache
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "slmtrain", "run", str(recipe),
                          "--run-dir", str(tmp_path / "ddp"), "--set", "train.batch_size=8", *EXTRA,
                          "--set", f"parallel.strategy='{strategy}'"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli("run", str(recipe), "--run-dir", str(tmp_path / "one"), "--set", "train.batch_size=8",
                     "--set", "train.grad_accum=2", *EXTRA, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    # Same global batch, same global sample indices: the same windows, so the same losses up to reduction order.
    a, b = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert a.keys() == b.keys()
    assert all(abs(a[s] - b[s]) < 1e-4 * max(1.0, abs(b[s])) for s in a), (a, b)
    ckpts = list_checkpoints(tmp_path / "ddp" / "checkpoints")
    assert ckpts[-1].committed and ckpts[-1].meta["world_size"] == 2
    assert cli.main(["verify", str(tmp_path / "ddp")]) == 0  # the sharded save loads whole in one process
    # The 2-rank checkpoint resumes in one process (torch.distributed.checkpoint reshards), keeping the
    # global batch by accumulating twice; the continuation matches the 1-process run continued alike.
    for name in ("ddp", "one"):
        resumed = run_cli("resume", str(tmp_path / name), "--set", "train.max_steps=25", "--set", "train.grad_accum=2",
                          timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from step_00000020" in resumed.stderr
    a, b = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert max(a) == 25 and all(abs(a[s] - b[s]) < 1e-4 * max(1.0, abs(b[s])) for s in range(21, 26)), (a, b)
    refused = run_cli("resume", str(tmp_path / "ddp"), "--set", "train.max_steps=30", "--set", "train.grad_accum=1",
                      timeout=300)
    assert refused.returncode == 2 and "train.grad_accum (2 -> 1)" in refused.stderr  # would halve the batch
