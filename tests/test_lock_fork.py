"""The run lock dies with its holder even when the holder's forked workers live on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slmtrain.errors import RunLockedError
from slmtrain.lock import RunLock

# Takes the lock, forks a worker the way the DataLoader and the tokenizer pool do, waits. The worker prints its
# pid from its own code, so the pid arrives only once the fork is complete in the child (its at-fork hooks have
# run): a holder killed in the microseconds between fork and those hooks is not the case under test.
HOLDER = """
import multiprocessing, os, sys, time
from slmtrain.lock import RunLock

def work():
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    RunLock(sys.argv[1]).acquire()
    multiprocessing.get_context("fork").Process(target=work, daemon=True).start()
    time.sleep(120)
"""


def test_a_forked_worker_of_a_holder_killed_with_kill_9_does_not_keep_the_run_locked(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline()) if holder.stdout else 0
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()  # held while the holder lives
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the orphaned worker still runs (raises if it does not)
        with RunLock(tmp_path) as lock:
            assert lock.held
    finally:
        holder.kill()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
