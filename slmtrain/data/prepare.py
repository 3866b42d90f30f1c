"""Tokenize a corpus once into flat token files, cached by what determines them.

Layout of one preparation (a directory named by the cache key, under `data.cache_dir` or
`OUT_DIR/.data`):

    tokenizer.json   canonical JSON of the tokenizer
    train.bin        header + tokens of every training document, EOS after each
    valid.bin        the same for validation
    meta.json        counts, dtype, EOS id, fingerprints; written last

A `.bin` file is a 256-byte little-endian header (magic, format version, dtype code, token count,
EOS id, zero padding) followed by the tokens as uint16 (vocabularies up to 65535 ids) or uint32.
A preparation is built in `<key>.tmp-<random>/` and renamed into place, so a crash or an
interruption never leaves a directory that looks complete. Documents are encoded in chunks of about
256 KB, one thread per usable CPU (the encoders run without the GIL), and written in order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import secrets
import shutil
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slmtrain.config import Config, TokenizerConfig
from slmtrain.data.sources import SPLITS, file_sha256, load_splits, source_fingerprints
from slmtrain.data.tokenizer import Tokenizer, build_tokenizer, expand_path
from slmtrain.errors import DataError, SlmError
from slmtrain.fsio import atomic_write_json, fsync_dir, read_json

MAGIC = b"SLMTOKS\x00"
BIN_VERSION = 1
HEADER_SIZE = 256
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, dtype code (= item size), token count, EOS id
_DTYPE_CODES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}
# Bump when the layout or meaning of a preparation changes; old caches are then rebuilt.
CACHE_VERSION = 1
# ~256 KB of text per encode call: big enough that per-call work is noise, small enough that the last
# chunks of a split still keep every thread busy.
_CHUNK_CHARS = 1 << 18


class PrepareInterrupted(SlmError):
    """`stop()` asked preparation to end early; nothing was cached. Exit 75: run it again later."""

    exit_code = 75


@dataclass
class PreparedData:
    """A ready preparation. `tokens` and `bytes` are totals over both splits (per split: `meta`)."""

    tokenizer: Tokenizer
    train_path: Path
    valid_path: Path
    dir: Path
    meta: dict[str, Any]
    reused: bool
    seconds: float
    tokens: int
    bytes: int


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in it, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def write_tokens(path: str | os.PathLike[str], tokens: np.ndarray | Iterable[np.ndarray | Sequence[int]],
                 dtype: np.dtype | type, eos: int) -> int:
    """Write a token file atomically: a temp file beside `path`, fsync, rename.

    Args:
        path: destination.
        tokens: one array, or an iterable of chunks (arrays or int sequences) written in order.
        dtype: uint16 or uint32.
        eos: the EOS id recorded in the header.

    Returns:
        The number of tokens written.

    Raises:
        ValueError: an unsupported dtype, or a token that does not fit it.
    """
    dtype = np.dtype(dtype)
    if dtype not in _DTYPE_CODES.values():
        raise ValueError(f"token files hold uint16 or uint32, not {dtype}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    chunks = [tokens] if isinstance(tokens, np.ndarray) else tokens
    count = 0
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER_SIZE))  # placeholder until the count is known
            for chunk in chunks:
                arr = np.asarray(chunk).reshape(-1)
                if arr.dtype != dtype:
                    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
                        raise ValueError(f"token ids {arr.min()}..{arr.max()} do not fit {dtype}")
                    arr = arr.astype(dtype)
                f.write(arr.tobytes())
                count += arr.size
            f.seek(0)
            f.write(_HEADER.pack(MAGIC, BIN_VERSION, dtype.itemsize, count, eos))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return count


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a token file, checked against the file's size.

    Returns:
        {"version", "dtype" (np.dtype), "n_tokens", "eos_id"}.

    Raises:
        DataError: missing, truncated, foreign or newer-format file (the message names it).
    """
    path = Path(path)
    advice = "Delete the preparation directory holding it; it is rebuilt on the next run."
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"token file {str(path)!r} cannot be read: {e.strerror}. {advice}") from None
    if len(head) < HEADER_SIZE:
        raise DataError(f"token file {str(path)!r} is truncated ({size} bytes, shorter than its header). {advice}")
    magic, version, code, n_tokens, eos = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise DataError(f"{str(path)!r} is not a slmtrain token file (bad magic {magic!r}). {advice}")
    if version != BIN_VERSION or code not in _DTYPE_CODES:
        raise DataError(f"token file {str(path)!r} has format version {version} / dtype code {code}; this slmtrain "
                        f"reads version {BIN_VERSION}. {advice}")
    expected = HEADER_SIZE + n_tokens * code
    if size != expected:
        raise DataError(f"token file {str(path)!r} is truncated or corrupt: its header promises {n_tokens} tokens "
                        f"({expected} bytes) but it has {size} bytes. {advice}")
    return {"version": version, "dtype": _DTYPE_CODES[code], "n_tokens": n_tokens, "eos_id": eos}


def open_tokens(path: str | os.PathLike[str]) -> np.memmap:
    """The tokens of a file as a read-only memmap (the header validated first).

    Raises:
        DataError: as `read_header`, or the file holds no tokens.
    """
    header = read_header(path)
    if header["n_tokens"] == 0:
        raise DataError(f"token file {str(path)!r} holds no tokens. Prepare a non-empty corpus.")
    return np.memmap(path, dtype=header["dtype"], mode="r", offset=HEADER_SIZE, shape=(header["n_tokens"],))


def cache_root(cfg: Config) -> Path:
    """Parent directory of all preparations: data.cache_dir, else OUT_DIR/.data."""
    return expand_path(cfg.data.cache_dir) if cfg.data.cache_dir else expand_path(cfg.run.out_dir) / ".data"


def _cache_key(tcfg: TokenizerConfig, fingerprints: dict[str, str], tok: Tokenizer | None) -> str:
    tparts: dict[str, Any] = {"kind": tcfg.kind}
    if tok is not None:  # a loaded tokenizer is identified by content, wherever its files live
        tparts["fingerprint"] = tok.fingerprint
    else:  # a trained one is a function of the training documents and these knobs
        tparts.update(vocab_size=tcfg.vocab_size, min_frequency=tcfg.min_frequency,
                      train_documents=tcfg.train_documents)
    parts = {"cache": CACHE_VERSION, "bin": BIN_VERSION, "sources": fingerprints, "tokenizer": tparts}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(cfg: Config, stop: Callable[[], bool] | None = None,
                 log: Callable[[str], None] = print) -> PreparedData:
    """Tokenized train/valid streams for `cfg`, reused from the cache when they are up to date.

    Args:
        cfg: the recipe; `data` and `tokenizer` decide the content, `data.cache_dir` (or
            `run.out_dir`) where it lives, `data.prepare_workers` how it is computed.
        stop: polled between chunks of documents; when it returns True the build is abandoned.
        log: receives one progress line per split and one summary line.

    Raises:
        DataError: bad sources or tokenizer (see `load_documents`, `build_tokenizer`).
        PrepareInterrupted: `stop()` returned True; no partial preparation is left behind.
    """
    t0 = time.perf_counter()
    fingerprints, tok = _fingerprints_and_tokenizer(cfg)
    key = _cache_key(cfg.tokenizer, fingerprints, tok)
    root = cache_root(cfg)
    final = root / key
    meta = _reusable_meta(final, fingerprints, log)
    reused = meta is not None
    if meta is None:
        meta = _build(cfg, final, fingerprints, tok, stop or (lambda: False), log)
    # The cached file is checked against meta's fingerprint, which for gpt2 is part of the key.
    tokenizer = tok if tok is not None else Tokenizer.from_file(final / "tokenizer.json")
    splits = meta["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    nbytes = sum(s["bytes"] for s in splits.values())
    seconds = time.perf_counter() - t0
    log(f"data: {'reused' if reused else 'prepared'} {final} ({tokens:,} tokens, {nbytes / 1e6:.1f} MB, "
        f"vocab {meta['vocab_size']}, {seconds:.2f}s)")
    return PreparedData(tokenizer=tokenizer, train_path=final / "train.bin", valid_path=final / "valid.bin",
                        dir=final, meta=meta, reused=reused, seconds=seconds, tokens=tokens, bytes=nbytes)


def _fingerprints_and_tokenizer(cfg: Config) -> tuple[dict[str, str], Tokenizer | None]:
    """The source fingerprints and, for gpt2, the loaded tokenizer with its fingerprint computed.

    The files are hashed on a thread (file reads and hashlib release the GIL) while this one loads the
    tokenizer and serializes it canonically, which hold the GIL: ~15 ms of TinyStories' hashing hidden.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="slmtrain-fingerprint") as pool:
        fingerprints = pool.submit(source_fingerprints, cfg.data)
        try:
            tok = build_tokenizer(cfg.tokenizer, []) if cfg.tokenizer.kind == "gpt2" else None
            if tok is not None:
                _ = tok.fingerprint  # the costly part (~90 ms for GPT-2), here to overlap the hashing
        except Exception:
            fingerprints.result()  # a bad source is reported first, as when the two ran in turn
            raise
        return fingerprints.result(), tok


def _reusable_meta(final: Path, fingerprints: dict[str, str], log: Callable[[str], None]) -> dict[str, Any] | None:
    """meta.json of a complete, consistent preparation at `final`, else None."""
    if not (final / "meta.json").is_file():
        return None
    try:
        meta = read_json(final / "meta.json")
        ok = (meta.get("format_version") == CACHE_VERSION and meta.get("source_fingerprints") == fingerprints
              and file_sha256(final / "tokenizer.json") == meta["tokenizer"]["fingerprint"]
              and all(read_header(final / f"{s}.bin")["n_tokens"] == meta["splits"][s]["tokens"] for s in SPLITS))
    except (OSError, DataError, ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError: ValueError
        log(f"data: cached preparation {final} is unreadable ({e}); rebuilding it")
        return None
    if not ok:
        log(f"data: cached preparation {final} does not match its fingerprints; rebuilding it")
        return None
    return meta


def _build(cfg: Config, final: Path, fingerprints: dict[str, str], tok: Tokenizer | None,
           stop: Callable[[], bool], log: Callable[[str], None]) -> dict[str, Any]:
    tmp = final.with_name(f"{final.name}.tmp-{secrets.token_hex(4)}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"cannot create the data cache in {final.parent} ({e.strerror}): set data.cache_dir "
                        f"to a writable directory") from None
    try:
        docs = load_splits(cfg.data)
        if tok is None:
            t = time.perf_counter()
            tok = build_tokenizer(cfg.tokenizer, docs["train"])
            log(f"data: trained a BPE tokenizer of {tok.vocab_size} tokens in {time.perf_counter() - t:.2f}s")
        tok.save(tmp / "tokenizer.json")
        dtype = token_dtype(tok.vocab_size)
        with _encoder_pool(tok, dtype, cfg.data.prepare_workers) as (pool, encode_chunk, width):
            encode = functools.partial(_encoded_chunks, pool=pool, encode_chunk=encode_chunk, window=2 * width,
                                       stop=stop)
            splits = {s: _write_split(encode, docs[s], tmp / f"{s}.bin", dtype, tok.eos_id, s, log) for s in SPLITS}
        meta = {
            "format_version": CACHE_VERSION, "bin_version": BIN_VERSION, "key": final.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dtype": dtype.name, "eos_id": tok.eos_id, "vocab_size": tok.vocab_size,
            "tokenizer": {"kind": cfg.tokenizer.kind, "fingerprint": tok.fingerprint},
            "source": cfg.data.source, "source_fingerprints": fingerprints, "splits": splits,
            "bytes_counted": "UTF-8 bytes of each stripped document plus 1 per document for its EOS",
        }
        atomic_write_json(tmp / "meta.json", meta)  # last: its presence marks the directory complete
        _publish(tmp, final, fingerprints, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_json(final / "meta.json")


def _publish(tmp: Path, final: Path, fingerprints: dict[str, str], log: Callable[[str], None]) -> None:
    """Rename `tmp` to `final`, replacing a stale `final`; a concurrent valid build wins."""
    stale = None
    if final.exists():
        if _reusable_meta(final, fingerprints, log) is not None:  # another process finished first
            shutil.rmtree(tmp)
            return
        stale = final.with_name(f"{final.name}.stale-{secrets.token_hex(4)}")
        os.rename(final, stale)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _write_split(encode: Callable[[list[str]], Iterator[np.ndarray]], docs: list[str], path: Path, dtype: np.dtype,
                 eos: int, split: str, log: Callable[[str], None]) -> dict[str, Any]:
    t = time.perf_counter()
    n_tokens = write_tokens(path, encode(docs), dtype, eos)
    # One byte per document stands for its EOS, so bytes and tokens cover the same stream.
    n_bytes = sum(len(d.encode("utf-8")) for d in docs) + len(docs)
    dt = max(time.perf_counter() - t, 1e-9)
    log(f"data: {split}: {len(docs):,} documents -> {n_tokens:,} tokens, {n_bytes / 1e6:.1f} MB in {dt:.2f}s "
        f"({n_tokens / dt:,.0f} tokens/s, {n_bytes / 1e6 / dt:.2f} MB/s)")
    return {"documents": len(docs), "tokens": n_tokens, "bytes": n_bytes, "tokens_per_byte": n_tokens / n_bytes}


def _chunks(docs: list[str]) -> Iterator[list[str]]:
    start, size = 0, 0
    for i, d in enumerate(docs):
        size += len(d)
        if size >= _CHUNK_CHARS:
            yield docs[start:i + 1]
            start, size = i + 1, 0
    if start < len(docs):
        yield docs[start:]


def _encoded_chunks(docs: list[str], *, pool: Executor, encode_chunk: Callable[[list[str]], np.ndarray],
                    window: int, stop: Callable[[], bool]) -> Iterator[np.ndarray]:
    """Token arrays of consecutive document chunks, EOS after each document, in order, polling `stop`."""
    interrupted = PrepareInterrupted("data preparation was interrupted; nothing was cached")
    pending: deque[Future[np.ndarray]] = deque()
    for chunk in itertools.chain(_chunks(docs), [None]):
        if chunk is not None:
            pending.append(pool.submit(encode_chunk, chunk))
        # A bounded window keeps memory flat and lets `stop` act within a few chunks.
        while pending and (chunk is None or len(pending) >= window):
            if stop():
                raise interrupted
            yield pending.popleft().result()


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _encoder_pool(tok: Tokenizer, dtype: np.dtype, workers: int
                  ) -> Iterator[tuple[Executor, Callable[[list[str]], np.ndarray], int]]:
    """(executor, chunk encoder, how many chunks it encodes at once) for data.prepare_workers.

    0 or 1: one thread per usable CPU in this process. tiktoken encodes without holding the GIL and
    `tokenizers` spreads each call over its own threads, so threads use every core and copy nothing.
    More: that many processes, each encoding on one thread.
    """
    # Build the tokenizer's fast encoder here, once: threads would race to build it, forked workers inherit it.
    tok.encode_stream([], dtype)
    pool: Executor
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        width = _usable_cpus()
        pool = ThreadPoolExecutor(width, thread_name_prefix="slmtrain-encode")
        encode: Callable[[list[str]], np.ndarray] = functools.partial(tok.encode_stream, dtype=dtype)
    else:
        # fork, like torch's DataLoader on Linux: spawn would re-run the caller's main module, which
        # breaks scripts without a `__main__` guard. Forked workers also inherit `tok` as it is.
        width, encode = workers, _worker_encode
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_worker_init, initargs=(tok, dtype))
    try:
        yield pool, encode, width
    finally:
        pool.shutdown(cancel_futures=True)


_worker_state: dict[str, Any] = {}


def _worker_init(tok: Tokenizer, dtype: np.dtype) -> None:
    # Each worker process is one tokenizer thread; N processes of N threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_state.update(tok=tok, dtype=dtype)


def _worker_encode(docs: list[str]) -> np.ndarray:
    return _worker_state["tok"].encode_stream(docs, _worker_state["dtype"])
