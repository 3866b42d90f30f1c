"""Curves from metrics.jsonl: training and validation loss, validation bits per byte, learning rate and
tokens/s, for one run or several overlaid. Headless (matplotlib's Agg canvas, no pyplot state), so it runs on
servers and in a background thread; it reads files and imports no training code.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slmtrain.errors import UserError
from slmtrain.log import read_jsonl

X_AXES = {"steps": ("step", "step"), "tokens": ("tokens", "tokens seen"), "time": ("time", "wall time (s)")}
PANELS = (("loss", "loss (nats/token)"), ("val_bpb", "validation bits per byte"), ("lr", "learning rate"),
          ("tokens_per_s", "tokens/s"))


def _series(records: list[dict[str, Any]], kind: str, key: str, x: str) -> tuple[list[float], list[float]]:
    """x and y of one quantity; a gap (NaN) where the step goes back, so a rolled-back stretch ends where it
    was abandoned instead of a line joining its last point to the retrained one."""
    rows = [r for r in records if r.get("kind") == kind and key in r and r.get(x) is not None]
    start = min((r["time"] for r in records if "time" in r), default=0.0) if x == "time" else 0.0
    xs: list[float] = []
    ys: list[float] = []
    for prev, r in zip([None, *rows], rows):
        if prev is not None and r.get("step", 0) < prev.get("step", 0):
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(r[x] - start)
        ys.append(r[key])
    return xs, ys


def figure(run_dirs: Sequence[str | Path], x: str = "steps") -> Any:
    """A matplotlib Figure with one panel per quantity and one line per run (and per split for the loss).

    Raises:
        UserError: an unknown x axis, or a directory without metrics.jsonl.
    """
    if x not in X_AXES:
        raise UserError(f"--x {x!r} is not one of {', '.join(X_AXES)}")
    from matplotlib.figure import Figure

    field, label = X_AXES[x]
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    axes = dict(zip((k for k, _ in PANELS), fig.subplots(2, 2).flat))
    for key, title in PANELS:
        axes[key].set_title(title)
        axes[key].set_xlabel(label)
        axes[key].grid(alpha=0.3)
    for i, run_dir in enumerate(run_dirs):
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise UserError(f"{run_dir} holds no metrics.jsonl: pass a run directory (e.g. runs/quickstart)")
        records = read_jsonl(path)
        name = Path(run_dir).name
        color = f"C{i % 10}"
        axes["loss"].plot(*_series(records, "train", "loss", field), color=color, lw=1, alpha=0.6,
                          label=f"{name} train")
        axes["loss"].plot(*_series(records, "eval", "val_loss", field), color=color, lw=2, marker="o", ms=3,
                          label=f"{name} validation")
        axes["val_bpb"].plot(*_series(records, "eval", "val_bpb", field), color=color, lw=2, marker="o", ms=3,
                             label=name)
        axes["lr"].plot(*_series(records, "train", "lr", field), color=color, lw=1.5, label=name)
        axes["tokens_per_s"].plot(*_series(records, "train", "tokens_per_s", field), color=color, lw=1, label=name)
    for ax in axes.values():
        if ax.get_lines():
            ax.legend(fontsize=8)
    return fig


def plot(run_dirs: Sequence[str | Path], out: str | Path, x: str = "steps") -> Path:
    """Write the curves of `run_dirs` to the PNG `out`, atomically; returns the path."""
    fig = figure(run_dirs, x)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}.png"
    FigureCanvasAgg(fig).print_png(str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


class CurvesRefresher:
    """Redraws RUN_DIR/curves.png in a background thread after each evaluation, never blocking training.

    A request while a drawing is still running is folded into one more drawing after it. Failures are
    kept in `error` (plots are a convenience: they never stop a run).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False

    def request(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._work, name="slmtrain-curves", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                plot([self.run_dir], self.run_dir / "curves.png")
            except Exception as e:  # noqa: BLE001 - reported, never raised into training
                self.error = f"{type(e).__name__}: {e}"
            with self._lock:
                if not self._again:
                    return
                self._again = False

    def close(self, timeout: float = 30.0) -> None:
        """Wait for a drawing in flight (the final curves belong in the run directory)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
