"""Console output (rank 0 only) and the metrics.jsonl writer. A leaf module."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson


class Console:
    """Human output on stderr; a live progress line when stderr is a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool = True, progress: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.live = progress and self.stream.isatty()
        self._dirty = False

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._dirty:
            self.stream.write("\n")
            self._dirty = False
        self.stream.write(msg + "\n")
        self.stream.flush()

    def progress(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.live:
            self.stream.write("\r\033[K" + msg)
            self._dirty = True
            self.stream.flush()
        else:
            self.info(msg)


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


class TensorBoard:
    """Mirrors metrics records into TensorBoard event files under RUN_DIR/tensorboard (scalars per train and
    eval record, generated samples as text). Needs the `tensorboard` package; `open` says so when it is missing.
    """

    SCALARS = {"train": ("loss", "lr", "grad_norm", "tokens_per_s"), "eval": ("val_loss", "val_ppl", "val_bpb")}

    def __init__(self, writer: Any) -> None:
        self._w = writer

    @classmethod
    def open(cls, directory: Path, console: Console) -> TensorBoard | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.info("log.tensorboard = true, but the tensorboard package is not installed: "
                         "pip install tensorboard (or slmtrain[tensorboard]). Training continues without it.")
            return None
        return cls(SummaryWriter(log_dir=str(directory)))

    def record(self, r: dict[str, Any]) -> None:
        if self._w is None:
            return
        step = r.get("step", 0)
        for key in self.SCALARS.get(r["kind"], ()):
            if isinstance(r.get(key), (int, float)):
                self._w.add_scalar(f"{r['kind']}/{key}", r[key], step)
        if r["kind"] == "sample":
            self._w.add_text(f"sample/{r.get('prompt', '')}", r.get("text", ""), step)

    def close(self) -> None:
        if self._w is not None:  # shared by the metrics and samples writers: the first close ends it
            self._w.close()
            self._w = None

    def __bool__(self) -> bool:
        return self._w is not None


class MetricsWriter:
    """Appends one JSON object per line; each line is flushed so a crash loses at most the line in flight."""

    def __init__(self, path: Path, enabled: bool = True, mirror: TensorBoard | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.mirror = mirror
        self._f = open(path, "ab") if enabled else None

    def write(self, kind: str, **fields: Any) -> None:
        if self._f is None:
            return
        record = {"kind": kind, **fields, "time": round(time.time(), 3)}
        self._f.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._f.flush()
        if self.mirror is not None:
            self.mirror.record(record)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete, parseable line; a torn last line from a crash is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
