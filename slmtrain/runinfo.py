"""run.json bookkeeping (status, attempts, versions) and the `slmtrain status` report."""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import slmtrain.fsio as fsio
from slmtrain.version import __version__
from slmtrain.checkpoint import list_checkpoints
from slmtrain.log import fmt_count, read_jsonl

RUN_JSON = "run.json"


def versions() -> dict[str, str]:
    import numpy
    import torch

    return {"slmtrain": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def read(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RUN_JSON
    if not path.exists():
        return None
    try:
        data = fsio.read_json(path)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def start_attempt(run_dir: Path, kind: str) -> str | None:
    """Record a new attempt as running; returns the status before it (None for a new run)."""
    data = read(run_dir) or {"created": time.time(), "attempts": []}
    previous = data.get("status")
    data["status"] = "running"
    data["versions"] = versions()
    data["attempts"].append({"kind": kind, "pid": os.getpid(), "host": socket.gethostname(),
                             "start": time.time(), "end": None, "exit_code": None, "reason": None})
    fsio.atomic_write_json(run_dir / RUN_JSON, data)
    return previous


def record(run_dir: Path, **fields: Any) -> None:
    """Set top-level fields of run.json (e.g. the step count a time budget fixed)."""
    data = read(run_dir) or {"created": time.time(), "attempts": []}
    data.update(fields)
    fsio.atomic_write_json(run_dir / RUN_JSON, data)


def end_attempt(run_dir: Path, status: str, exit_code: int, reason: str, **extra: Any) -> None:
    data = read(run_dir) or {"created": time.time(), "attempts": [{}]}
    data["status"] = status
    data.update(extra)
    last = data["attempts"][-1]
    last.update({"end": time.time(), "exit_code": exit_code, "reason": reason})
    fsio.atomic_write_json(run_dir / RUN_JSON, data)


def _when(ts: float | str | None) -> str:
    if isinstance(ts, str):
        return ts.replace("T", " ")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _export_readiness(run_dir: Path) -> str:
    import slmtrain.config as config
    import slmtrain.hflayout as hflayout
    from slmtrain.errors import UserError

    try:
        m = config.load(run_dir / "recipe.toml").model
    except UserError as e:
        return f"unknown (recipe.toml: {e})"
    arch = hflayout.architecture(m)
    if arch is None:
        return f"{m.flavour} flavour, no transformers class: {hflayout.refusal(m)}"
    return f"{m.flavour} flavour -> transformers {arch} (slmtrain export RUN OUT_DIR)"


def status_report(run_dir: Path) -> str:
    """Human summary: status, attempts, checkpoints (sound or not) and the last metrics."""
    data = read(run_dir)
    lines = [f"run {run_dir}"]
    if data is None:
        lines.append("  run.json missing or unreadable")
    else:
        lines.append(f"  status: {data.get('status')}   attempts: {len(data.get('attempts', []))}")
        for i, a in enumerate(data.get("attempts", []), 1):
            lines.append(f"    #{i} {a.get('kind', '?'):6s} pid {a.get('pid')} start {_when(a.get('start'))} "
                         f"end {_when(a.get('end'))} exit {a.get('exit_code')} ({a.get('reason')})")
        if data.get("planned_steps"):
            lines.append(f"  steps fitted to the time budget: {data['planned_steps']}")
    lines.append(f"  export: {_export_readiness(run_dir)}")
    ckpts = list_checkpoints(run_dir / "checkpoints")
    lines.append(f"  checkpoints: {len(ckpts)}")
    for c in ckpts:
        meta = c.meta or {}
        val = meta.get("val_loss")
        state = "sound" if not c.problems else "NOT SOUND: " + "; ".join(c.problems[:3])
        lines.append(f"    {c.path.name}  step {c.step}  {_when(meta.get('created'))}  "
                     f"val_loss {val if val is None else f'{val:.4f}'}  {fmt_count(_dir_size(c.path))}B  {state}")
    records = read_jsonl(run_dir / "metrics.jsonl")
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    if rollbacks:
        last = rollbacks[-1]
        lines.append(f"  rollbacks: {len(rollbacks)} (last: step {last['from_step']} -> {last['step']}, "
                     f"{last['reason']})")
    for kind in ("train", "eval"):
        last = next((r for r in reversed(records) if r.get("kind") == kind), None)
        if last:
            shown = {k: v for k, v in last.items() if k not in ("kind", "time")}
            lines.append(f"  last {kind}: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in shown.items()))
    return "\n".join(lines)
