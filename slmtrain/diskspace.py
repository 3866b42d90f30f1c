"""Write errors said in words: no space left (with the filesystem, its free bytes and what a checkpoint
needs), permission denied (with the path), a file-size limit, a read-only filesystem, whatever torch or
torch.distributed.checkpoint wrapped them in.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from pathlib import Path

from slmtrain.log import fmt_count


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def space_problem(root: Path, needed: int, free: int | None = None) -> str | None:
    """A sentence when the filesystem of `root` (with `free` bytes free, measured now if None) clearly cannot
    take `needed` more bytes, else None."""
    free = free_bytes(root) if free is None else free
    if free >= needed:
        return None
    return (f"no space left on device: the filesystem at {mount_point(root)} has {fmt_count(free)}B free and a "
            f"checkpoint needs about {fmt_count(needed)}B. Free some space (or point run.out_dir elsewhere) and "
            f"resume")


def _chain(error: BaseException) -> list[BaseException]:
    """The error, its causes and contexts, and the per-rank failures DCP collects, depth first."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]  # type: ignore[list-item]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's CheckpointException
        if isinstance(failures, dict):
            todo += [f for f in failures.values() if isinstance(f, BaseException)]
            todo += [f[0] for f in failures.values() if isinstance(f, tuple) and f and isinstance(f[0], BaseException)]
    return seen


def describe(error: BaseException, root: Path, needed: int) -> str:
    """What went wrong writing a checkpoint under `root`, in words a user acts on."""
    chain = _chain(error)
    for e in chain:
        code = getattr(e, "errno", None)
        where = getattr(e, "filename", None) or root
        if code in (errno.ENOSPC, errno.EDQUOT):
            return space_problem(root, max(needed, free_bytes(root) + 1)) or "no space left on device"
        if code == errno.EROFS:
            return f"read-only filesystem at {mount_point(root)}: put the run directory on a writable one"
        if (named := _named(code, f" writing {where}", "make the run directory writable for this user",
                            "or use a smaller model", "")) is not None:
            return named
    # torch's zip writer reports a full disk or a size limit as a bare "unexpected pos": the free space and
    # the process's limit tell which.
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        return (f"file size limit exceeded: this process may write files of at most {fmt_count(limit)}B (see "
                f"`ulimit -f`) and a checkpoint holds about {fmt_count(needed)}B. Raise the limit and resume")
    at_failure = [f for e in chain if (f := getattr(e, "free_bytes_at_failure", None)) is not None]
    problem = space_problem(root, needed, min(at_failure) if at_failure else None)
    if problem is not None:
        return problem
    if any("unexpected pos" in str(e) for e in chain):
        # A short write with room left afterwards: something else filled the disk for a moment (another
        # job's file, a failed preallocation given back) and freed it again before the space was measured.
        return (f"no space left on device: a checkpoint write under {mount_point(root)} was cut short, and the "
                f"filesystem has {fmt_count(free_bytes(root))}B free now, so something else filled it for a "
                f"moment. Make sure it keeps about {fmt_count(needed)}B free for a checkpoint and resume")
    return f"{type(error).__name__}: {error}"


def plain_write_error(error: BaseException) -> str | None:
    """A failed write outside a checkpoint save (the data cache, metrics, run.json) in words, or None when
    `error` is not a write error of the environment (then it is a bug, reported with its traceback)."""
    for e in _chain(error):
        code = getattr(e, "errno", None)
        name = getattr(e, "filename", None)
        where = f" writing {name}" if name else ""
        if code in (errno.ENOSPC, errno.EDQUOT):
            at = f" (the filesystem at {mount_point(Path(name))} has {fmt_count(free_bytes(Path(name)))}B free)" \
                if name else ""
            return f"no space left on device{where}{at}: free some space, then run the command again"
        if (named := _named(code, where, "make that place writable for this user, or choose another",
                            "then run the command again", "choose a writable place")) is not None:
            return named
    return None


def _named(code: int | None, where: str, permission_fix: str, limit_then: str, readonly_fix: str) -> str | None:
    """The sentence for a permission error, a file-size limit or a read-only filesystem; None for other codes."""
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: {permission_fix}"
    if code == errno.EFBIG:
        return f"file size limit exceeded{where} (see `ulimit -f`): raise the limit for this process, {limit_then}"
    if code == errno.EROFS:
        return f"read-only filesystem{where}: {readonly_fix}"
    return None
