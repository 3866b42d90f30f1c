"""RunLock: one writer per run directory, with real processes holding and losing the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from slmtrain.errors import RunLockedError, UserError
from slmtrain.lock import LOCK_FILE, RunLock

# Takes the lock, says so, then holds it until stdin closes or it is killed.
HOLDER = """
import sys
from slmtrain.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def _start_holder(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "locked":
        proc.kill()
        pytest.fail(f"holder did not take the lock: {line!r} {proc.communicate()[1]}")
    return proc


def test_acquire_records_holder_and_release_clears(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert lock.held
        info = orjson.loads((tmp_path / LOCK_FILE).read_bytes())
        assert info["pid"] == os.getpid()
        assert info["host"] and info["started"]
    assert not lock.held
    assert (tmp_path / LOCK_FILE).read_bytes() == b""
    RunLock(tmp_path).acquire()  # free again after release


def test_second_lock_in_same_process_contends(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_live_holder_blocks_with_its_pid_and_kill9_frees(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "wait" in msg and "stop it" in msg and str(tmp_path) in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # The dead holder's record is still in the file, yet it must not block.
    assert orjson.loads((tmp_path / LOCK_FILE).read_bytes())["pid"] == proc.pid
    with RunLock(tmp_path):
        assert orjson.loads((tmp_path / LOCK_FILE).read_bytes())["pid"] == os.getpid()


def test_second_live_process_is_refused_naming_holder(tmp_path: Path) -> None:
    first = _start_holder(tmp_path)
    try:
        second = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "RunLockedError" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.stdin.close()  # type: ignore[union-attr]
        first.wait(timeout=10)
    assert first.returncode == 0


def test_missing_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        RunLock(tmp_path / "nope").acquire()
