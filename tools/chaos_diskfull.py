"""Chaos with a full disk (`chaos.py --disk-full`): the run's filesystem runs out of room, again and again.

Each cycle starts (or resumes) the run and takes its room away at one of two moments:
- `before`: as the attempt starts, leaving less than one checkpoint free (the first save is refused before
  anything is written);
- `during n`: as the attempt's n-th save (n from 1 to 3) creates its temporary directory, leaving only a
  few hundred KiB for the logs (that save fails mid-write or, if its big files were already out, the next
  one is refused).
The attempt must then exit 1 with one plain message (`checkpoint save at step N failed: no space left on
device ...`, no traceback), leave no temporary directory, and keep every committed checkpoint sound
(`slmtrain verify`). The room is given back and the next cycle resumes. Last, a resume with room must finish
with final weights and every logged loss equal to an uninterrupted run's, bit for bit.

Where: a real tmpfs mounted for the experiment, which needs root. Without one (`fsize`, or `auto` when the
mount fails), the missing room is emulated with RLIMIT_FSIZE, set on the running attempt with prlimit: a
write past the limit fails with EFBIG where a full disk gives ENOSPC, so the message checked there is
`file size limit exceeded`; everything else is checked alike.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from chaos import job_cmd, newest_committed, reference_run, same_run, saving_now
from slmtrain.checkpoint import list_checkpoints
from slmtrain.log import read_jsonl
from slmtrain.manifest import TMP_RE, parse_step
from slmtrain.verify import verify

SLACK = 256 * 1024  # left free for metrics lines, run.json and the failure's own records
ATTEMPT_SECONDS = 300.0  # an attempt running longer than this hangs: it is killed and fails the experiment


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _Tmpfs:
    """A small tmpfs for the run directory; squeezing fills it with a file, relieving deletes that file."""

    cause = "no space left on device"

    def __init__(self, mnt: Path, size: int) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024 + 1}k", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {mnt}: {proc.stderr.strip() or 'mount failed'}")
        self.root = mnt
        self.filler = mnt / "filler"

    def squeeze(self, pid: int, room: int) -> None:
        """Fill the filesystem until `room` bytes are left; the run may be writing at the same moment."""
        with open(self.filler, "ab") as f:
            while (grow := shutil.disk_usage(self.root).free - room) > 0:
                try:
                    os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), grow)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    # The run took some of it meanwhile: measure again.

    def relieve(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], check=False)


class _SizeLimit:
    """RLIMIT_FSIZE on the running attempt: below a checkpoint's largest file, above every other file."""

    cause = "file size limit exceeded"

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit

    def squeeze(self, pid: int, room: int) -> None:
        try:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (self.limit, self.limit))
        except ProcessLookupError:
            pass  # the attempt already ended; the cycle's checks say how

    def relieve(self) -> None:
        """Nothing: the limit belongs to the attempt that ended, and the next one starts without it."""

    def close(self) -> None:
        """Nothing to undo."""


def _squeezer(how: str, workdir: Path, ref_dir: Path, size: int, out: TextIO) -> _Tmpfs | _SizeLimit:
    """The filesystem (or limit) for the experiment; `size`: the bytes of one checkpoint."""
    if how in ("auto", "tmpfs"):
        # Room for the run's own files, the kept checkpoints (newest two and the best) and one being written.
        total = 6 * size + (4 << 20)
        try:
            fs = _Tmpfs(workdir / "small", total)
            print(f"disk: a real tmpfs of {total >> 20} MiB at {fs.root}; a checkpoint takes {size / 1e6:.2f} MB",
                  file=out)
            return fs
        except OSError as e:
            if how == "tmpfs":
                raise
            print(f"disk: {e}; emulating with RLIMIT_FSIZE (a write past it fails with EFBIG, not ENOSPC)", file=out)
    ckpts = [c.path for c in list_checkpoints(ref_dir / "checkpoints") if c.committed]
    biggest = max(f.stat().st_size for c in ckpts for f in c.rglob("*") if f.is_file())
    others = max(f.stat().st_size for f in ref_dir.rglob("*") if f.is_file() and "checkpoints" not in f.parts)
    limit = biggest // 2
    if limit <= 2 * others:
        raise ValueError(f"a checkpoint's largest file ({biggest} B) is too close to the run's other files "
                         f"({others} B) for RLIMIT_FSIZE to stand in for a full disk: use a larger model")
    print(f"disk: RLIMIT_FSIZE of {limit} B (a checkpoint's largest file is {biggest} B, the run's other files "
          f"at most {others} B)", file=out)
    return _SizeLimit(workdir, limit)


def _wait_for_save(proc: subprocess.Popen, ckpt_root: Path, n: int) -> bool:
    """Return once the attempt's n-th save has created its temporary directory; False if it ended first."""
    seen: set[str] = set()
    while proc.poll() is None:
        if ckpt_root.is_dir():
            names = [p.name for p in ckpt_root.iterdir()]
            newest = max((parse_step(name) or 0 for name in names), default=0)
            # A save's directory is for a step past every committed one; a prune's are for older steps.
            seen |= {name for name in names
                     if TMP_RE.fullmatch(name) and (parse_step(name.split(".tmp-")[0]) or 0) > newest}
            if len(seen) >= n:
                return True
        time.sleep(0.002)
    return False


def _check_failed_attempt(run_dir: Path, code: int, err: str, cause: str) -> tuple[str, str | None]:
    """(where the save failed, a problem or None) for an attempt that should have failed its save cleanly."""
    text = " ".join(err.split())  # the CLI wraps its messages
    failed = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "save_failed"]
    if code != 1 or "Traceback" in err or not failed or f"failed: {cause}" not in text:
        return "", f"exit {code}, expected 1 with a plain '{cause}' message:\n{err[-2000:]}"
    last = failed[-1]
    where = f"step {last['step']} " + ("before writing" if "checked before writing" in last["cause"] else "mid-write")
    if not last["cause"].startswith(cause):
        return where, f"save_failed names {last['cause']!r}, not {cause!r}"
    root = run_dir / "checkpoints"
    if saving_now(run_dir):
        return where, f"temporary directories left: {[p.name for p in root.iterdir() if '.tmp-' in p.name]}"
    committed = [c for c in list_checkpoints(root) if c.committed]
    if any(c.step >= last["step"] for c in committed):
        return where, f"the failed save at step {last['step']} left a committed checkpoint"
    unsound = [c.path.name for c in committed if not verify(c.path).sound]
    if unsound:
        return where, f"checkpoints that no longer verify: {unsound}"
    return f"{where}, {len(committed)} sound", None


def run_diskfull_experiment(recipe: Path, workdir: Path, fills: int, overrides: list[str], seed: int,
                            out: TextIO = sys.stdout, how: str = "auto") -> bool:
    """Run out of room `fills` times (see the module's docstring), then finish and compare.

    Args:
        how: "tmpfs" (a real small filesystem; root only), "fsize" (RLIMIT_FSIZE), or "auto" (tmpfs if it
            can be mounted).

    Returns:
        True when every cycle failed its save cleanly with earlier checkpoints sound, and the finished run
        equals the uninterrupted one bit for bit.
    """
    from slmtrain import config

    sets = [a for o in overrides for a in ("--set", o)]
    ref_dir = workdir / "reference"
    reference_run(recipe, ref_dir, sets, config.load(recipe, overrides).train.max_steps, out)
    size = max(_tree_bytes(c.path) for c in list_checkpoints(ref_dir / "checkpoints") if c.committed)
    disk = _squeezer(how, workdir, ref_dir, size, out)
    chaos_dir = disk.root / "chaos"
    rng = random.Random(seed)
    log_path = workdir / "chaos-attempts.log"
    ok = True
    print(f"{'fill':>4} {'moment':>10} {'save failed at':>30} {'newest_sound':>12}", file=out)
    try:
        for cycle in range(1, fills + 2):
            last = cycle > fills
            first = not (chaos_dir / "run.json").exists()
            args = job_cmd(1, "run", str(recipe), "--run-dir", str(chaos_dir), *sets) if first else \
                job_cmd(1, "resume", str(chaos_dir), *sets)
            moment = "" if last else rng.choice(["before", f"during {rng.randint(1, 3)}"])
            with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the child
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
                if moment == "before":
                    disk.squeeze(proc.pid, SLACK + int(rng.uniform(0.05, 0.9) * size))
                elif moment and _wait_for_save(proc, chaos_dir / "checkpoints", int(moment.split()[1])):
                    disk.squeeze(proc.pid, SLACK)
                try:
                    code = proc.wait(timeout=ATTEMPT_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
            err = log_path.read_text()
            disk.relieve()
            if last:
                if code != 0:
                    print(f"the last attempt, with room, exited {code}:\n{err[-2000:]}", file=out)
                    ok = False
                break
            where, problem = _check_failed_attempt(chaos_dir, code, err, disk.cause)
            print(f"{cycle:>4} {moment:>10} {where:>30} {str(newest_committed(chaos_dir)):>12}", file=out)
            if problem:
                print(f"fill {cycle}: {problem}", file=out)
                ok = False
                break
        if ok:
            same, same_losses = same_run(ref_dir, chaos_dir)
            print(f"fills: {fills}  final weights equal: {same}  losses equal: {same_losses}", file=out)
            ok = same and same_losses
    finally:
        if chaos_dir.is_dir() and disk.root != workdir:
            # The tmpfs goes with the experiment: keep a copy of the run beside the reference.
            shutil.copytree(chaos_dir, workdir / "chaos", dirs_exist_ok=True)
        disk.close()
    print("PASS" if ok else "FAIL", file=out)
    return ok
