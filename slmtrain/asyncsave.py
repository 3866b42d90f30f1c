"""Background checkpoint writing: one thread, at most one save in flight, errors surface in the caller."""

from __future__ import annotations

import concurrent.futures
import copy
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def snapshot(obj: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples, tensors detached and copied to CPU, dict subclasses as dicts.

    Lets the training loop mutate its tensors right after submitting a background save.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        items = [snapshot(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return copy.deepcopy(obj)


class AsyncSaver(Generic[T]):
    """Runs saves on one background thread, at most one in flight; errors surface in the caller's thread.

    Submitted functions must only touch data no one mutates (see `snapshot`). Under a process group, DCP's
    collectives would run on this thread concurrently with training's: one process only, or a separate group.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slmtrain-save")
        self._future: concurrent.futures.Future[T] | None = None

    @property
    def busy(self) -> bool:
        """True while a submitted save is still running."""
        return self._future is not None and not self._future.done()

    def submit(self, fn: Callable[[], T]) -> None:
        """Wait for the previous save (re-raising its error, and then `fn` is not started), then start `fn`."""
        self.wait()
        self._future = self._pool.submit(fn)

    def poll(self) -> None:
        """Re-raise the error of a finished failed save, once; a running or successful save is left alone."""
        f = self._future
        if f is not None and f.done() and f.exception() is not None:
            self._future = None
            raise f.exception()  # type: ignore[misc]

    def wait(self) -> T | None:
        """Block until the in-flight save ends; return its result (None if there was none) or re-raise."""
        f, self._future = self._future, None
        return None if f is None else f.result()

    def close(self) -> None:
        """Wait for the in-flight save (re-raising its error) and stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
