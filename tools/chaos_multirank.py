"""The faults `chaos.py --nproc N` deals a job running under torchrun, and how it checks that the job ended.

One of, chosen at random: kill -9 of one rank (torchrun's agent notices, stops the others and exits), kill -9
of the whole job (the agent and every rank at once, as when a node dies), or SIGTERM to one rank (the ranks
agree, save one whole checkpoint and exit 75). A kill during start-up, before the ranks exist, is of the
whole job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from slmtrain.fsio import read_json

# From a fault to the job's end: torchrun notices a dead rank within a second, then stops the others with
# SIGTERM and, after its 30 s grace, SIGKILL. A job that outlives this bound is a hang, and fails the experiment.
END_SECONDS = 120.0


def rank_pids(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of a torchrun agent's worker processes, read from their environment."""
    pids = {}
    out = subprocess.run(["pgrep", "-P", str(agent_pid)], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # it exited since pgrep saw it
        for kv in env:
            if kv.startswith(b"RANK="):
                pids[int(kv[5:])] = pid
    return pids


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie (dead, not yet reaped by its new parent) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill_group(pid: int, sig: signal.Signals) -> None:
    # torchrun starts every rank in a session of its own, so the group also holds the rank's DataLoader workers.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # already gone


def strike(agent: subprocess.Popen, run_dir: Path, rng: random.Random, startup: bool) -> tuple[str, str | None]:
    """Deal one fault to the job `agent` runs (started in a session of its own) and wait for the job to end.

    Returns:
        (the fault in words, a problem or None): the problem says what went wrong after the fault (the job
        outlived END_SECONDS, a rank survived it, or a SIGTERM did not end in a preempted or finished run).
    """
    ranks = rank_pids(agent.pid)
    pick = rng.random()
    signalled = None
    if startup or len(ranks) < 2 or pick < 0.35:
        fault = "job -9"
        for pid in (agent.pid, *ranks.values()):
            _kill_group(pid, signal.SIGKILL)
    else:
        rank = rng.choice(sorted(ranks))
        signalled = signal.SIGKILL if pick < 0.8 else signal.SIGTERM
        fault = f"rank {rank} {'-9' if signalled == signal.SIGKILL else 'TERM'}"
        try:
            os.kill(ranks[rank], signalled)
        except ProcessLookupError:
            pass  # it had just exited: the job is ending anyway
    deadline = time.monotonic() + END_SECONDS
    try:
        agent.wait(timeout=END_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(agent.pid, signal.SIGKILL)
        agent.wait()
        return fault, f"the job was still running {END_SECONDS:.0f}s after the fault"
    while any(_alive(pid) for pid in ranks.values()):
        if time.monotonic() > deadline:
            return fault, f"a rank outlived its agent by {END_SECONDS:.0f}s"
        time.sleep(0.05)
    if signalled == signal.SIGTERM:
        status = read_json(run_dir / "run.json").get("status")
        if status not in ("preempted", "finished"):
            return fault, f"SIGTERM to one rank left the run {status!r}, not preempted (or finished)"
    return fault, None
