"""A full disk, a file-size limit and a read-only directory, met by real runs: said plainly, nothing lost."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import events, train_losses, write_recipe

from slmtrain import cli
from slmtrain.checkpoint import list_checkpoints
from slmtrain.diskspace import describe, mount_point
from slmtrain.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from chaos import CHAOS_RECIPE, final_weights  # noqa: E402
from chaos_diskfull import run_diskfull_experiment  # noqa: E402


@pytest.fixture()
def small_fs(tmp_path: Path):
    """A real 16 MiB tmpfs (needs root, which CI has), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert proc.returncode == 0, f"root could not mount a tmpfs: {proc.stderr.strip()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _sets(*extra: str) -> list[str]:
    base = ["train.max_steps=30", "checkpoint.every_steps=10", "checkpoint.keep_last=5", "eval.every_steps=0",
            "log.curves=false"]
    return [a for s in [*base, *extra] for a in ("--set", s)]


def test_a_full_disk_is_said_plainly_and_resume_finishes_exactly(small_fs: Path, tmp_path: Path, cache: Path,
                                                                 capsys) -> None:
    recipe = write_recipe(tmp_path, cache)
    ref = tmp_path / "ref"
    assert cli.main(["run", str(recipe), "--run-dir", str(ref), *_sets()]) == 0
    size = sum(f.stat().st_size for f in (ref / "checkpoints" / "step_00000010").rglob("*") if f.is_file())
    # Leave room for the run's files and two checkpoints, not three.
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(small_fs).free - int(2.5 * size) - 200_000))
    run = small_fs / "run"
    capsys.readouterr()
    assert cli.main(["run", str(recipe), "--run-dir", str(run), *_sets()]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "checkpoint save at step 30 failed: no space left on device: the filesystem at" in err, err
    assert str(small_fs) in err and "B free and a checkpoint needs about" in err and "Traceback" not in err
    saved = [c for c in list_checkpoints(run / "checkpoints")]
    assert [c.step for c in saved] == [10, 20] and all(c.committed for c in saved)
    assert all(verify(c.path).sound for c in saved)
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert events(run, "save_failed")[0]["cause"].startswith("no space left on device")
    filler.unlink()
    assert cli.main(["resume", str(run)]) == 0
    assert train_losses(run) == train_losses(ref)
    a, b = final_weights(ref), final_weights(run)
    assert all((a[k] == b[k]).all() for k in a)


_LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000)); "
            "from slmtrain import cli; sys.exit(cli.main(sys.argv[1:]))")


def test_a_file_size_limit_mid_write_is_named(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path, cache)
    assert cli.main(["prepare", str(recipe)]) == 0  # the token files are larger than the limit set below
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "run", str(recipe), "--run-dir", str(tmp_path / "run"),
                           *_sets()], capture_output=True, text=True, timeout=300)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert "failed: file size limit exceeded" in err and "ulimit -f" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_a_write_error_while_preparing_data_is_said_plainly_and_leaves_no_partial_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    recipe = write_recipe(tmp_path, cache)
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "prepare", str(recipe)], capture_output=True, text=True,
                          timeout=300)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert "error: file size limit exceeded" in err and "ulimit -f" in err and "Traceback" not in err, err
    # Nothing half-written is left to be trusted: the next prepare (without the limit) builds the cache whole.
    assert cli.main(["prepare", str(recipe)]) == 0


def test_a_real_enospc_and_eacces_inside_wrappers_are_named(small_fs: Path, tmp_path: Path) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        (small_fs / "big").write_bytes(b"\0" * (20 << 20))
    except OSError as e:
        enospc = e
    assert enospc.errno == errno.ENOSPC
    wrapped = CheckpointException("save", {0: enospc})
    try:
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from wrapped
    except RuntimeError as outer:
        text = describe(outer, small_fs, 10_000_000)
    assert text.startswith("no space left on device: the filesystem at " + str(small_fs))
    # As root (CI) directory permissions do not stop a write, so the error is the one the OS would raise.
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    assert describe(CheckpointException("save", {0: denied}), tmp_path, 1).startswith(
        f"permission denied writing {tmp_path / 'x'}")


def test_a_short_write_with_room_left_afterwards_is_still_named_a_full_disk(tmp_path: Path) -> None:
    # Another process can fill the disk for a moment (a preallocation that fails and is given back): torch's
    # zip writer then stops at "unexpected pos" and the space is back before anyone measures it.
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    short.free_bytes_at_failure = 10**12  # type: ignore[attr-defined]
    text = describe(short, tmp_path, 1_000_000)
    assert text.startswith(f"no space left on device: a checkpoint write under {mount_point(tmp_path)} was cut "
                           "short"), text
    assert "1.00MB free for a checkpoint" in text, text
    # Any other error without an errno keeps its own words.
    assert describe(RuntimeError("boom"), tmp_path, 1_000_000) == "RuntimeError: boom"


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_chaos_runs_out_of_room_twice_each_save_fails_plainly_and_resume_is_exact(tmp_path: Path, cache: Path,
                                                                                  how: str) -> None:
    if how == "tmpfs" and os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); the fsize case runs everywhere")
    recipe = tmp_path / "chaos.toml"
    recipe.write_text(CHAOS_RECIPE.format(cache=cache.as_posix()))
    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        # Seed 9 fills the disk during the attempt's second save, then as the next attempt starts.
        ok = run_diskfull_experiment(recipe, tmp_path, 2, ["train.max_steps=18", "log.curves=false"], seed=9,
                                     out=out, how=how)
    report = log.read_text()
    assert ok, report
    assert ("a real tmpfs" if how == "tmpfs" else "RLIMIT_FSIZE of") in report, report
    rows = [line.split() for line in report.splitlines() if re.match(r"\s+[12] +(before|during)", line)]
    assert [r[1] for r in rows] == ["during", "before"], report
    # When the disk filled up the second time, the checkpoint(s) written before it were still there and sound.
    assert re.search(r"\b[1-9] sound", report.splitlines()[-3]), report
    assert "fills: 2  final weights equal: True  losses equal: True" in report, report
