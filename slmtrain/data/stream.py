"""Random training windows from a flat token file, addressed by (seed, global sample index).

Sample i is the window of seq_len + 1 tokens starting at `splitmix64(seed, i) % (n_tokens -
seq_len - 1)`: a pure function, so the data cursor is one integer and resuming is exact. Samples
are grouped into global micro-batches (micro-batch k holds samples k*B .. k*B+B-1) and optimizer
step s consumes micro-batches [s*A*W, (s+1)*A*W) (A = grad_accum, W = world_size): the samples of a
step are the same set for any split of the global batch between processes, accumulation and
micro-batch size.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from slmtrain.data.prepare import open_tokens, read_header
from slmtrain.errors import DataError

CURSOR_VERSION = 1
_U64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def splitmix64(seed: int, index: int | np.ndarray) -> np.ndarray:
    """The `index`-th output (uint64, vectorised over `index`) of splitmix64 seeded by a mix of `seed`."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        # Mixing the seed first keeps nearby seeds (1, 2, ...) from giving shifted copies of one stream.
        state = _mix(np.array(seed & _U64, dtype=np.uint64))
        i = np.asarray(index, dtype=np.uint64)
        return _mix(state + (i + np.uint64(1)) * _GOLDEN)


def window_starts(seed: int, indices: int | np.ndarray, n_tokens: int, seq_len: int) -> np.ndarray:
    """Start offsets (int64) of the windows of global sample `indices`."""
    return (splitmix64(seed, indices) % np.uint64(n_tokens - seq_len - 1)).astype(np.int64)


class WindowDataset(Dataset):
    """Map-style dataset: item k is global micro-batch k as (x, y) int64 tensors (micro_batch, seq_len).

    The token file is opened lazily, so the dataset pickles to DataLoader workers cheaply.

    Raises:
        DataError: the token file is invalid or shorter than seq_len + 2 tokens.
    """

    def __init__(self, path: str | os.PathLike[str], seq_len: int, micro_batch: int, seed: int) -> None:
        if seq_len < 1 or micro_batch < 1:
            raise ValueError(f"seq_len and micro_batch must be >= 1, got {seq_len}, {micro_batch}")
        self.path = Path(path)
        self.seq_len, self.micro_batch, self.seed = seq_len, micro_batch, seed
        self.n_tokens = read_header(self.path)["n_tokens"]
        if self.n_tokens < seq_len + 2:
            raise DataError(f"{self.path} holds {self.n_tokens} tokens, too few for windows of model.seq_len + 1 = "
                            f"{seq_len + 1}. Use more data (e.g. data.builtin_*_stories) or a shorter model.seq_len.")
        self._tokens: np.memmap | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}

    def rows(self, first: int, count: int) -> np.ndarray:
        """Samples first .. first+count-1 as an int64 array (count, seq_len + 1)."""
        if self._tokens is None:
            self._tokens = open_tokens(self.path)
        starts = window_starts(self.seed, np.arange(first, first + count, dtype=np.uint64), self.n_tokens,
                               self.seq_len)
        n = self.seq_len + 1
        return np.stack([self._tokens[s:s + n] for s in starts.tolist()]).astype(np.int64)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(int(k) * self.micro_batch, self.micro_batch)
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


class MicroBatchSampler(Sampler[int]):
    """Infinite sampler of the global micro-batch indices rank `rank` consumes, in order.

    For step s >= start_step and micro-step m < grad_accum it yields
    `(s * grad_accum + m) * world_size + rank`. Its position (micro-batches handed out) is
    `step * grad_accum + micro`, the same on every rank. `micro_batch` and `seed` are not used
    to sample; they are recorded in the state so a cursor is never applied to another stream.
    """

    def __init__(self, rank: int, world_size: int, grad_accum: int, start_step: int = 0, *,
                 micro_batch: int = 0, seed: int = 0) -> None:
        if not (0 <= rank < world_size) or grad_accum < 1 or start_step < 0:
            raise ValueError(f"need 0 <= rank < world_size, grad_accum >= 1, start_step >= 0; got rank={rank}, "
                             f"world_size={world_size}, grad_accum={grad_accum}, start_step={start_step}")
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.micro_batch, self.seed = micro_batch, seed
        self.position = start_step * grad_accum

    def __iter__(self) -> Iterator[int]:
        # Reads and advances self.position, so an iterator made after load_state_dict resumes there.
        while True:
            p = self.position
            self.position += 1
            yield p * self.world_size + self.rank

    def state_at(self, position: int) -> dict[str, int]:
        """The state of this sampler had it handed out `position` micro-batches."""
        return {"version": CURSOR_VERSION, "world_size": self.world_size, "grad_accum": self.grad_accum,
                "micro_batch": self.micro_batch, "seed": self.seed,
                "step": position // self.grad_accum, "micro": position % self.grad_accum}

    def state_dict(self) -> dict[str, int]:
        return self.state_at(self.position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`'s position.

        Raises:
            DataError: the state is of another version or another layout (world size, grad
                accumulation, micro-batch size or seed).
        """
        if not isinstance(state, dict) or state.get("version") != CURSOR_VERSION:
            raise DataError(f"data cursor: unsupported state {state!r} (this slmtrain writes version "
                            f"{CURSOR_VERSION}). The checkpoint comes from an incompatible slmtrain.")
        keys = ("world_size", "grad_accum", "micro_batch", "seed")
        saved = {k: state.get(k) for k in keys}
        here = {k: getattr(self, k) for k in keys}
        if saved != here:
            def fmt(d: dict[str, Any]) -> str:
                return ", ".join(f"{k}={v}" for k, v in d.items())
            raise DataError(f"data cursor mismatch: it was saved with {fmt(saved)}, but this loader has {fmt(here)}. "
                            f"A saved cursor only resumes the same layout. To continue with a new layout, build the "
                            f"loader with start_step={state.get('step')} instead: the stream stays exact as long as "
                            f"world_size * grad_accum * micro_batch and the seed are unchanged.")
        self.position = int(state["step"]) * self.grad_accum + int(state["micro"])


class WindowLoader(StatefulDataLoader):
    """A StatefulDataLoader whose state is the data cursor alone: the micro-batches delivered.

    Workers are stateless and prefetching never changes what a batch holds, so restoring
    the sampler position is exact and does not depend on `num_workers`. Call `iter()` again
    after `load_state_dict`.
    """

    def __init__(self, dataset: WindowDataset, sampler: MicroBatchSampler, num_workers: int,
                 pin_memory: bool) -> None:
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, deprecated in recent torch (seen with 2.13): noise for users.
            warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated")
            # Its own generator: starting an iterator must not draw from the global torch RNG, or dropout
            # masks after a resume would be one draw off those of an uninterrupted run.
            super().__init__(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                             pin_memory=pin_memory, persistent_workers=False,
                             prefetch_factor=2 if num_workers else None,
                             generator=torch.Generator().manual_seed(sampler.seed))
        self._cursor = sampler
        self._delivered = sampler.position

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        # A previous iterator's workers may have prefetched past what was delivered; start after the delivered.
        self._cursor.position = self._delivered
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self._cursor.state_at(self._delivered)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._cursor.load_state_dict(state_dict)
        self._delivered = self._cursor.position


def build_train_loader(path: str | os.PathLike[str], seq_len: int, micro_batch: int, seed: int, rank: int,
                       world_size: int, grad_accum: int, num_workers: int, pin_memory: bool = False,
                       start_step: int = 0) -> WindowLoader:
    """An endless loader of this rank's training micro-batches, from optimizer step `start_step` on.

    Each item is (x, y), int64 tensors (micro_batch, seq_len), y = x shifted by one token. The
    loader's `state_dict()` is the data cursor (with the layout it belongs to); `load_state_dict`
    restores it exactly, and raises DataError for a cursor of another layout.
    """
    dataset = WindowDataset(path, seq_len, micro_batch, seed)
    sampler = MicroBatchSampler(rank, world_size, grad_accum, start_step, micro_batch=micro_batch, seed=seed)
    return WindowLoader(dataset, sampler, num_workers, pin_memory)


def eval_batches(path: str | os.PathLike[str], seq_len: int, batch_size: int, n_batches: int,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of `n_batches` (x, y) validation batches: the same for every call with equal arguments."""
    dataset = WindowDataset(path, seq_len, batch_size, seed)
    return [dataset[k] for k in range(n_batches)]
