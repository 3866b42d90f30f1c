"""Atomic, self-verifying checkpoint directories: the mechanism. When and what to save is the caller's policy.

A checkpoint `step_%08d/` holds one torch.distributed.checkpoint ("DCP") directory per top-level key of the
application state (`model/`, `optim/`: the model loads without touching the optimizer), `rank_%05d.pt` per rank
(torch.save of a dict), extra files given as bytes, and `meta.json`, written last, with the size and sha256 of
every other file. Protocol: write into `step_N.tmp-<hex>/`, fsync all, write meta.json, rename to `step_N/`,
fsync the parent, replace `latest`. A crash leaves a `*.tmp-*` directory (never trusted) or a whole checkpoint;
`latest` may lag one behind, so discovery verifies checksums rather than trusting it.

Trust: DCP's `.metadata` is a pickle, so loading a checkpoint can run code, as with any torch checkpoint. The
checksums catch corruption, not tampering.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import secrets
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from slmtrain import fsio
from slmtrain.errors import CheckpointError
from slmtrain.manifest import (
    RANK_RE,
    RESERVED_META,
    TMP_RE,
    CKPT_SCHEMA,
    LATEST_FILE,
    META_FILE,
    MODEL_DIR,
    load_meta,
    parse_step,
    meta_digest,
    rank_file_name,
    step_dir_name,
    verify_manifest,
)


# ------------------------------------------------------------------------------------------------ save
def save_checkpoint(root: Path, step: int, app_state: dict[str, Any], rank_state: dict[str, Any],
                    files: dict[str, bytes], meta: dict[str, Any], *, rank: int = 0, world_size: int = 1,
                    log: Callable[[str], None] | None = None, group: Any = None) -> Path:
    """Write and commit the checkpoint for `step` under `root` (created if missing), then point `latest` at it.

    Args:
        app_state: {name: nested dict of tensors and plain values}; each name becomes its own DCP
            directory (e.g. {"model": msd, "optim": osd} -> model/, optim/). "model" is required.
        rank_state: this rank's private state (RNG, data cursor), written with torch.save.
        files: extra files, relative posix path -> bytes (e.g. config.json); written by rank 0 only.
        meta: JSON-serializable caller metadata for meta.json; schema, step, files, world_size, created
            are reserved.
        world_size: with more than one rank, every rank calls this alike inside a process group. DCP's
            collectives make rank 0 commit after every rank's files exist; other ranks may return before
            the rename, so barrier afterwards wherever every rank must see the commit.
        log: told when an unsound existing `step_N/` is moved aside (default: warnings.warn).
        group: the process group for the save's collectives (default: the global one). A save on a
            background thread needs a group of its own, so its collectives never pair with training's.

    Returns:
        The committed directory. If `step_N/` already exists and verifies, it is kept as is and returned
        (an end-of-run save right after a periodic one).

    Raises:
        ValueError: a reserved meta key, or an extra file name that is not a plain relative path.
        Exception: any write error, as raised (DCP's wrapper removed). The tmp directory is removed (best
            effort; a crash leaves it for `cleanup_tmp`); earlier checkpoints and `latest` are untouched.
    """
    root = Path(root)
    if clash := sorted(RESERVED_META & meta.keys()):
        raise ValueError(f"checkpoint meta keys {clash} are reserved for the checkpoint format")
    if MODEL_DIR not in app_state:
        raise ValueError(f"app_state must hold {MODEL_DIR!r}, got keys {sorted(app_state)}")
    for rel in files:
        _check_extra_name(rel, app_state)
    final = root / step_dir_name(step)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
    token = _from_rank0(_claim(final, log) if rank == 0 else None, world_size, group)
    if token is None:  # already committed
        if rank == 0:
            fsio.atomic_write_text(root / LATEST_FILE, final.name + "\n")
        return final
    tmp = root / f"{final.name}.tmp-{token}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        # Before dcp.save on purpose: rank 0 leaves dcp.save only after gathering every rank's write results,
        # which doubles as the barrier that puts every rank file on disk before rank 0 builds the manifest.
        _write_synced(tmp / rank_file_name(rank), lambda f: torch.save(rank_state, f))
        for name, sub in app_state.items():
            try:
                dcp.save({name: sub}, checkpoint_id=tmp / name, no_dist=_no_dist(), process_group=group)
            except CheckpointException as e:
                raise _dcp_error(e) from e
        if rank != 0:
            return final
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        doc = {**meta, "schema": CKPT_SCHEMA, "step": step, "world_size": world_size,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dcp": sorted(app_state),
               "files": _fsync_and_hash(tmp)}
        doc["meta_sha256"] = meta_digest(doc)
        _write_synced(tmp / META_FILE, lambda f: f.write(fsio.dumps_json(doc) + b"\n"))
        fsio.fsync_dir(tmp)
        os.rename(tmp, final)
        fsio.fsync_dir(root)
    except BaseException as e:
        # The free space as the write failed, before removing the partial files gives it back: what tells a
        # full disk from other errors when torch reports it without an errno.
        try:
            e.free_bytes_at_failure = shutil.disk_usage(root).free  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            pass
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsio.atomic_write_text(root / LATEST_FILE, final.name + "\n")
    return final


def _write_synced(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _check_extra_name(rel: str, app_state: dict[str, Any]) -> None:
    p = PurePosixPath(rel)
    plain = bool(rel) and p.as_posix() == rel and not p.is_absolute() and ".." not in p.parts
    if not plain or rel == META_FILE or p.parts[0] in app_state or RANK_RE.fullmatch(rel):
        raise ValueError(f"extra checkpoint file {rel!r} must be a plain relative path other than "
                         f"{META_FILE}, the state directories {sorted(app_state)} and rank_NNNNN.pt")


def _claim(final: Path, log: Callable[[str], None] | None) -> str | None:
    """Rank 0: a fresh tmp token, or None when `final` is already committed."""
    if final.exists():
        if not (problems := verify_manifest(final)):
            return None
        # Never delete evidence: move the unsound directory aside under a name discovery ignores.
        aside = final.with_name(f"{final.name}.corrupt-{secrets.token_hex(4)}")
        os.rename(final, aside)
        fsio.fsync_dir(final.parent)
        (log or warnings.warn)(f"{final.name} existed but is not a sound checkpoint ({'; '.join(problems)}); "
                               f"moved it to {aside.name} and saving afresh")
    return secrets.token_hex(8)


def _from_rank0(value: str | None, world_size: int, group: Any = None) -> str | None:
    if world_size == 1:
        return value
    if _no_dist():
        raise ValueError(f"save_checkpoint with world_size={world_size} needs an initialized process group")
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _no_dist() -> bool:
    """True when DCP must run without collectives (no process group): the supported single-process mode."""
    if dist.is_available() and dist.is_initialized():
        return False
    # DCP warns on every single-process call, even with no_dist=True. A narrow, idempotent global filter,
    # because catch_warnings is not thread-safe and saves may run on AsyncSaver's thread.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                            category=UserWarning)
    return True


def _dcp_error(e: CheckpointException) -> BaseException:
    """The error behind DCP's CheckpointException (this rank's, else the first rank's).

    CheckpointException derives from BaseException: a caller's `except Exception` would miss a disk-full
    error wrapped in it.
    """
    if not e.failures:
        return CheckpointError(str(e))
    rank = 0 if _no_dist() else dist.get_rank()
    return e.failures.get(rank, next(iter(e.failures.values())))[0]


def _fsync_and_hash(tmp: Path) -> dict[str, dict[str, Any]]:
    """fsync every file and directory under `tmp`; return {relpath: {size, sha256}} without meta.json."""
    manifest = {}
    for dirpath, _dirnames, filenames in os.walk(tmp):
        for name in filenames:
            rel = Path(dirpath, name).relative_to(tmp).as_posix()
            if rel != META_FILE:
                with open(tmp / rel, "rb") as f:
                    os.fsync(f.fileno())
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                    manifest[rel] = {"size": os.fstat(f.fileno()).st_size, "sha256": digest}
        fsio.fsync_dir(dirpath)
    return dict(sorted(manifest.items()))


# ------------------------------------------------------------------------------------------------ load
def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a checkpoint. Raises CheckpointError if missing, unparsable or of another schema."""
    meta, problem = load_meta(Path(path))
    if meta is None:
        raise CheckpointError(f"{path}: {problem}")
    return meta


def read_rank_state(path: Path, rank: int = 0) -> dict[str, Any]:
    """The per-rank state dict saved by `rank`. Raises CheckpointError if missing or unreadable."""
    f = Path(path) / rank_file_name(rank)
    try:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # numpy RNG states need full unpickling; no new trust is granted, DCP's .metadata is a pickle too.
            state = torch.load(f, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing: was the checkpoint written with fewer ranks than {rank + 1}?") from None
    except Exception as e:  # noqa: BLE001 - unpickling garbage can raise almost any type
        raise CheckpointError(f"{f} is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{f} holds a {type(state).__name__}, not a dict")
    return state


def load_app_state(path: Path, app_state: dict[str, Any]) -> None:
    """Fill `app_state` (structured as saved) in place from DCP; no process group needed (with one, all ranks call).

    Only the keys given are read: {"model": sd} loads the weights without touching `optim/`.
    Raises CheckpointError naming the directory and DCP's reason (missing key, shape mismatch...).
    """
    for name, sub in app_state.items():
        src = Path(path) / name
        try:
            dcp.load({name: sub}, checkpoint_id=src, no_dist=_no_dist())
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - several unrelated types, all "cannot load"
            inner = _dcp_error(e) if isinstance(e, CheckpointException) else e
            raise CheckpointError(f"cannot load {name} state from {src}: {type(inner).__name__}: {inner}") from e


# ------------------------------------------------------------------------------------- discovery, prune
@dataclass
class CheckpointInfo:
    """One `step_N` directory. `committed`: meta.json present and every checksum matches (no problems)."""

    path: Path
    step: int
    committed: bool
    problems: list[str]
    meta: dict[str, Any] | None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_N` directory under `root` (sound or not), oldest first."""
    found = [(parse_step(c.name), c) for c in root.iterdir() if c.is_dir()] if root.is_dir() else []
    return sorted((s, c) for s, c in found if s is not None)


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every `step_N` directory under `root` (tmp and moved-aside ones excluded), verified, sorted by step."""
    out = []
    for step, d in step_dirs(Path(root)):
        problems = verify_manifest(d)
        out.append(CheckpointInfo(d, step, not problems, problems, load_meta(d)[0]))
    return out


def _read_latest(root: Path, log: Callable[[str], None]) -> str | None:
    """The name in `latest` if it names an existing step directory; otherwise log why not and return None."""
    f = root / LATEST_FILE
    try:
        name = f.read_bytes().decode("utf-8").strip()
        why = (f"holds {name!r:.60}, not a checkpoint name" if parse_step(name) is None
               else "" if (root / name).is_dir() else f"names {name}, which does not exist")
    except FileNotFoundError:
        why = "is missing"
    except (OSError, UnicodeDecodeError) as e:
        why = f"is unreadable ({e})"
    if why:
        log(f"{f} {why}; scanning for the newest sound checkpoint")
        return None
    return name


def find_resume(root: Path, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under `root` that passes `verify_manifest`, or None. Never deletes anything.

    `latest` is consulted, not trusted: it may lag the newest commit (a crash between rename and update) or
    name a damaged checkpoint. Reported through `log`: each newer torn or corrupt checkpoint with its
    problems, a missing or garbage `latest`, and a `latest` that disagrees with the choice.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    named = _read_latest(root, log)
    chosen = None
    for _step, d in reversed(step_dirs(root)):
        if not (problems := verify_manifest(d)):
            chosen = d
            break
        log(f"skipping {d.name}: {'; '.join(problems)}")
    if named is not None and (chosen is None or named != chosen.name):
        log(f"{root / LATEST_FILE} names {named} but "
            + (f"the newest sound checkpoint is {chosen.name}" if chosen else "no checkpoint is sound"))
    return chosen


def cleanup_tmp(root: Path) -> list[str]:
    """Delete `step_N.tmp-*` directories left by crashed saves or prunes; returns their names.

    Only while no save is in flight (at start-up, under the run lock): an in-flight one looks the same.
    """
    root = Path(root)
    found = sorted(c.name for c in root.iterdir() if TMP_RE.fullmatch(c.name) and c.is_dir()) if root.is_dir() else []
    for name in found:
        shutil.rmtree(root / name, ignore_errors=True)
    return found


def _val_loss(meta: dict[str, Any] | None) -> float | None:
    v = (meta or {}).get("val_loss")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def prune(root: Path, keep_last: int, keep_best: bool,
          protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete committed checkpoints but the newest `keep_last` (>= 1) and those below; return the deleted.

    Also kept: the one `latest` names, every path in `protect`, and with `keep_best` the one with the lowest
    finite meta "val_loss". Torn or corrupt checkpoints are neither counted nor deleted: they are the user's
    to inspect. Each deletion renames to `step_N.tmp-<hex>` first, so a crash mid-delete leaves a tmp
    directory for `cleanup_tmp`, never a half checkpoint.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(root)
    committed = [c for c in list_checkpoints(root) if c.committed]
    keep = {c.path for c in committed[-keep_last:]} | {Path(p).resolve() for p in protect}
    scored = [(loss, c.step, c.path) for c in committed if (loss := _val_loss(c.meta)) is not None]
    if keep_best and scored:
        keep.add(min(scored)[2])
    if (named := _read_latest(root, lambda _msg: None)) is not None:
        keep.add(root / named)
    deleted = []
    for c in committed:
        if c.path in keep or c.path.resolve() in keep:
            continue
        doomed = c.path.with_name(f"{c.path.name}.tmp-{secrets.token_hex(8)}")
        os.rename(c.path, doomed)
        fsio.fsync_dir(root)
        shutil.rmtree(doomed)
        deleted.append(c.path)
    return deleted
