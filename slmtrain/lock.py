"""One writer per run directory: an exclusive `flock` on RUN_DIR/.lock.

The kernel drops a flock when its holder exits, however it exits (kill -9 included), so a stale lock file
never blocks: only a live holder does. The file's content (pid, host, start time) exists only to tell the
user who holds it. flock is per open file description, so a second RunLock in the same process contends
like any other process would, and a forked child would share the lock: a DataLoader or tokenizer worker
left behind by a holder killed with kill -9 would keep the run locked for as long as it lives. Forked
children therefore close their copy at once (the parent's lock stands). Network filesystems may not
honour flock across hosts; keep run directories on a local disk or one that does.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import orjson

from slmtrain.errors import RunLockedError, UserError

LOCK_FILE = ".lock"

# Locks held in this process (acquired, not yet released), for the fork hook.
_held: set[RunLock] = set()
_fork_hook_registered = False  # once registered, a fork hook stays: os has no way to remove one


def _forget_in_child() -> None:
    """In a forked child: close its copies of the held lock files without unlocking (LOCK_UN would free the
    parent's lock too; a close drops only the child's reference)."""
    for lock in list(_held):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            os.close(fd)
    _held.clear()


def _watch(lock: RunLock) -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_forget_in_child)
        _fork_hook_registered = True
    _held.add(lock)


class RunLock:
    """Exclusive lock on a run directory, held from `acquire` until `release` or process exit.

    Usage: `with RunLock(run_dir): ...`, or `acquire()` / `release()`.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            RunLockedError: another live process (or another RunLock here) holds it; the message names its pid.
            UserError: the run directory does not exist.
        """
        if self._fd is not None:
            return
        if not self.run_dir.is_dir():
            raise UserError(f"run directory {self.run_dir} does not exist, so it cannot be locked")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(_locked_message(self.run_dir, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps(info) + b"\n", 0)
        os.fsync(fd)
        self._fd = fd
        _watch(self)

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: unlinking it would let two processes lock two inodes."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _held.discard(self)
        try:
            os.ftruncate(fd, 0)  # still held here, so no reader sees a half-cleared holder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    """What the holder wrote; empty if it has not written yet (it locks first, then writes)."""
    try:
        info = orjson.loads(os.pread(fd, 4096, 0))
    except (OSError, orjson.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _locked_message(run_dir: Path, holder: dict[str, object]) -> str:
    pid = holder.get("pid")
    host = holder.get("host")
    if pid is None:
        who = "another process (it has not recorded its pid yet)"
        stop = "stop it"
    else:
        where = f" on host {host}" if host and host != socket.gethostname() else ""
        who = f"another process, pid {pid}{where}, since {holder.get('started', '?')}"
        stop = f"stop it (`kill {pid}` saves a checkpoint and exits)"
    return (f"run directory {run_dir} is in use by {who}. Only one `slmtrain run`/`resume` may write a run "
            f"directory at a time: wait for that process to finish, or {stop}, then try again.")
