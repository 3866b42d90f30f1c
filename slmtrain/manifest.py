"""Checkpoint names and the manifest check: is a directory a sound, committed checkpoint?

`meta.json`, written last, lists the size and sha256 of every other file; a checkpoint is sound when every
listed file matches, nothing else is there, and meta.json itself is intact (it carries the sha256 of its own
canonical content). Never raises, whatever the files hold.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

CKPT_SCHEMA = 1
META_FILE = "meta.json"
LATEST_FILE = "latest"
MODEL_DIR = "model"  # the one DCP directory every checkpoint has (optimizer: "optim")
RESERVED_META = frozenset({"schema", "step", "files", "world_size", "created", "dcp", "meta_sha256"})
_STEP_RE = re.compile(r"step_(\d{8,})")
TMP_RE = re.compile(r"step_\d{8,}\.tmp-[0-9a-f]+")
RANK_RE = re.compile(r"rank_\d{5,}\.pt")


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint for `step`: "step_%08d"."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step_{step:08d}"


def rank_file_name(rank: int) -> str:
    """Per-rank state file inside a checkpoint: "rank_%05d.pt"."""
    return f"rank_{rank:05d}.pt"


def parse_step(name: str) -> int | None:
    """The step of a canonical checkpoint directory name; None for tmp, moved-aside and other names."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m and step_dir_name(int(m.group(1))) == name else None


def verify_manifest(path: Path) -> list[str]:
    """Problems of a checkpoint directory against its meta.json, each naming the file; [] means sound.

    E.g. "rank_00000.pt: missing", "model/__0_0.distcp: sha256 mismatch (file changed)". Never raises,
    whatever meta.json holds.
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a directory"]
    meta, problem = load_meta(path)
    if meta is None:
        return [problem]
    problems = _meta_problems(path, meta)
    files = meta.get("files")
    if not isinstance(files, dict):
        return [*problems, "meta.json: 'files' (the manifest) is missing or not an object"]
    for rel, entry in sorted(files.items()):
        problems += _file_problems(path, rel, entry)
    on_disk = {Path(d, n).relative_to(path).as_posix() for d, _, names in os.walk(path) for n in names}
    return problems + [f"{rel}: unexpected file not in the manifest"
                       for rel in sorted(on_disk - files.keys() - {META_FILE})]


def load_meta(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") or (None, the problem) for meta.json with a supported schema."""
    try:
        meta = orjson.loads((path / META_FILE).read_bytes())
    except FileNotFoundError:
        return None, "meta.json missing (the save never committed)"
    except OSError as e:
        return None, f"meta.json unreadable ({e.strerror})"
    except orjson.JSONDecodeError:
        return None, "meta.json is not valid JSON"
    if not isinstance(meta, dict):
        return None, f"meta.json holds a JSON {type(meta).__name__}, not an object"
    schema = meta.get("schema")
    if type(schema) is not int or schema != CKPT_SCHEMA:
        return None, f"meta.json: schema {schema!r:.40} unsupported (this slmtrain reads schema {CKPT_SCHEMA})"
    return meta, ""


def _meta_problems(path: Path, meta: dict[str, Any]) -> list[str]:
    problems = []
    step, ws = meta.get("step"), meta.get("world_size")
    files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    if type(step) is not int or step < 0:
        problems.append(f"meta.json: step {step!r:.40} is not a non-negative integer")
    elif parse_step(path.name) not in (None, step):
        problems.append(f"meta.json: step {step} does not match the directory name {path.name}")
    dcp_dirs = meta.get("dcp")
    if not isinstance(dcp_dirs, list) or MODEL_DIR not in dcp_dirs:
        problems.append(f"meta.json: 'dcp' {dcp_dirs!r:.60} does not list the {MODEL_DIR!r} state directory")
    else:
        problems += [f"{d}/.metadata: not in the manifest (no saved state)" for d in dcp_dirs
                     if not isinstance(d, str) or f"{d}/.metadata" not in files]
    if meta.get("meta_sha256") != meta_digest(meta):
        problems.append("meta.json: content does not match its own sha256 (edited or corrupted)")
    if type(ws) is not int or ws < 1:
        problems.append(f"meta.json: world_size {ws!r:.40} is not a positive integer")
    elif missing := [rank_file_name(r) for r in range(min(ws, len(files) + 1)) if rank_file_name(r) not in files]:
        problems.append(f"meta.json: world_size {ws} but the manifest lacks {', '.join(missing[:3])}"
                        + (" ..." if len(missing) > 3 else ""))
    return problems


def _file_problems(root: Path, rel: str, entry: Any) -> list[str]:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\x00" in rel:
        return [f"{rel!r:.80}: manifest path is not inside the checkpoint"]
    size, sha = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
    if type(size) is not int or not isinstance(sha, str):
        return [f"{rel}: malformed manifest entry {entry!r:.80}"]
    try:
        with open(root / rel, "rb") as f:
            if (actual := os.fstat(f.fileno()).st_size) != size:
                return [f"{rel}: size {actual} != {size} in the manifest "
                        f"({'truncated?' if actual < size else 'grown?'})"]
            if hashlib.file_digest(f, "sha256").hexdigest() != sha.lower():
                return [f"{rel}: sha256 mismatch (file changed)"]
    except FileNotFoundError:
        return [f"{rel}: missing"]
    except OSError as e:
        return [f"{rel}: unreadable ({e.strerror})"]
    return []




def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of meta.json's canonical content without its own digest field."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    try:
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except (TypeError, orjson.JSONEncodeError):
        return ""
