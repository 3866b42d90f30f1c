"""Documents from a `[data]` recipe section: the built-in stories, text, JSON(L), Parquet, the HF hub.

A document is one stripped, non-blank string. `load_documents` returns the documents of a split;
`source_fingerprint` identifies them without tokenizing, so prepared token files can be cached
and reused exactly when the same documents would come out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from slmtrain.config import DataConfig
from slmtrain.data.tokenizer import EOS_TOKEN, expand_path
from slmtrain.errors import DataError

SPLITS = ("train", "valid")
# Fixed, distinct seeds: the built-in corpus is the same for every run, so its cache is shared.
BUILTIN_TRAIN_SEED = 20_230_512
BUILTIN_VALID_SEED = 71_077_345
# Bump when parsing changes the documents a file yields; it invalidates every cached preparation.
READER_VERSION = 1
_EXTENSIONS = {"text": (".txt",), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


def load_documents(cfg: DataConfig, split: str) -> list[str]:
    """The documents of `split` ("train" or "valid"), in a deterministic order.

    Text files are split on `<|endoftext|>`. With no `data.valid` (file sources),
    round(n * valid_fraction) of the n training documents (at least one), evenly spread, are held
    out as validation, so the splits are disjoint. `data.max_documents` caps the training split
    after that.

    Raises:
        DataError: a file is missing, undecodable or malformed, a text key or column is missing,
            or the split holds no non-blank document. The message names the key and the file.
    """
    return load_splits(cfg, (split,))[split]


def load_splits(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> dict[str, list[str]]:
    """`load_documents` for each of `splits`, reading training files once when both splits come from them.

    Raises:
        DataError: as `load_documents`.
    """
    if bad := [s for s in splits if s not in SPLITS]:
        raise ValueError(f"split must be 'train' or 'valid', got {bad[0]!r}")
    train_docs: list[str] | None = None
    out = {}
    for split in splits:
        if cfg.source == "builtin":
            docs = _builtin(cfg, split)
        elif cfg.source.startswith("hf:"):
            docs = _hf_documents(cfg, split)
        elif split == "valid" and cfg.valid:
            docs = _read_all(cfg, "valid")
        else:
            if train_docs is None:
                train_docs = _read_all(cfg, "train")
            docs = train_docs if cfg.valid else _hold_out(cfg, train_docs, split)
        if split == "train" and cfg.max_documents:
            docs = docs[: cfg.max_documents]
        out[split] = docs
    return out


def source_fingerprints(cfg: DataConfig) -> dict[str, str]:
    """`source_fingerprint` of every split; a file both splits come from is hashed once.

    Raises:
        DataError: as `load_documents`, for missing files.
    """
    hashes: dict[Path, str] = {}
    return {split: source_fingerprint(cfg, split, hashes) for split in SPLITS}


def source_fingerprint(cfg: DataConfig, split: str, hashes: dict[Path, str] | None = None) -> str:
    """sha256 hex digest of everything that determines `load_documents(cfg, split)`.

    Files are hashed by content (a renamed or moved corpus keeps its fingerprint); the built-in
    corpus by the generator's source code, the story count and the seed. `hashes` memoizes file
    digests across the calls of one fingerprinting (pass a fresh dict: files may change between runs).

    Raises:
        DataError: as `load_documents`, for missing files.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    parts: dict[str, Any] = {"reader": READER_VERSION, "source": cfg.source, "split": split}
    if split == "train":
        parts["max_documents"] = cfg.max_documents
    if cfg.source == "builtin":
        from slmtrain.data import stories, story_text

        parts["generator"] = hashlib.sha256(b"".join(Path(m.__file__).read_bytes()
                                                     for m in (stories, story_text))).hexdigest()
        parts["count"], parts["seed"] = _builtin_count_seed(cfg, split)
    elif cfg.source.startswith("hf:"):
        parts["text_key"] = cfg.text_key
        parts["dataset"] = _hf_dataset(cfg, split)._fingerprint
    else:
        key = "valid" if split == "valid" and cfg.valid else "train"
        parts["text_key"] = cfg.text_key
        parts["files"] = [_memo_sha256(p, hashes) for p in _files(cfg, key)]
        if not cfg.valid:
            parts["valid_fraction"] = cfg.valid_fraction
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _builtin_count_seed(cfg: DataConfig, split: str) -> tuple[int, int]:
    if split == "train":
        return cfg.builtin_train_stories, BUILTIN_TRAIN_SEED
    return cfg.builtin_valid_stories, BUILTIN_VALID_SEED


def _builtin(cfg: DataConfig, split: str) -> list[str]:
    from slmtrain.data.stories import generate_stories  # heavy tables; only when the source is used

    count, seed = _builtin_count_seed(cfg, split)
    return generate_stories(count, seed)


def _hold_out(cfg: DataConfig, docs: list[str], split: str) -> list[str]:
    n = len(docs)
    if cfg.valid_fraction <= 0:
        raise DataError(f"data.valid is empty and data.valid_fraction is 0, so there is no validation split for "
                        f"data.train = {cfg.train!r}. Set data.valid to a file or data.valid_fraction > 0.")
    n_valid = max(1, round(n * cfg.valid_fraction))
    if n_valid >= n:
        raise DataError(f"data.train = {cfg.train!r} holds {n} document(s): too few to hold out "
                        f"data.valid_fraction = {cfg.valid_fraction} as validation. Add documents or set data.valid.")
    held = {int((j + 0.5) * n / n_valid) for j in range(n_valid)}
    return [d for i, d in enumerate(docs) if (i in held) == (split == "valid")]


def _files(cfg: DataConfig, key: str) -> list[Path]:
    raw = getattr(cfg, key)
    path = expand_path(raw)
    if path.is_file():
        return [path]
    exts = _EXTENSIONS[cfg.source]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(exts)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if files:
            return files
        raise DataError(f"data.{key} = {raw!r}: directory {str(path)!r} holds no {' or '.join(exts)} files for "
                        f"data.source = {cfg.source!r}. Point it at the data files or change data.source.")
    raise DataError(f"data.{key} = {raw!r}: {str(path)!r} does not exist. Fix the path (~ and $VARS are "
                    f"expanded; relative paths start at the working directory).")


def _memo_sha256(path: Path, memo: dict[Path, str] | None) -> str:
    if memo is None:
        return file_sha256(path)
    if path not in memo:
        memo[path] = file_sha256(path)
    return memo[path]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_all(cfg: DataConfig, key: str) -> list[str]:
    files = _files(cfg, key)
    docs: list[str] = []
    for path in files:
        if cfg.source == "text":
            docs.extend(_strip_all(_decode(path, key).split(EOS_TOKEN)))
        elif cfg.source == "parquet":
            docs.extend(_read_parquet(path, key, cfg.text_key))
        elif path.name.lower().endswith(".json"):
            docs.extend(_read_json(path, key, cfg.text_key))
        else:
            docs.extend(_read_jsonl(path, key, cfg.text_key))
    if not docs:
        where = str(files[0]) if len(files) == 1 else f"{len(files)} files under {getattr(cfg, key)!r}"
        raise DataError(f"data.{key}: {where} holds no documents (only blank text). Point data.{key} at a "
                        f"non-empty corpus.")
    return docs


def _strip_all(texts: list[Any]) -> list[str]:
    return [s for t in texts if t is not None and (s := t.strip())]


def _decode(path: Path, key: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"data.{key}: cannot read {str(path)!r}: {e.strerror}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"data.{key}: {str(path)!r} is not valid UTF-8 (byte offset {e.start}: "
                        f"{data[e.start:e.start + 4]!r}). Re-encode it as UTF-8, e.g. "
                        f"`iconv -f latin1 -t utf-8 in.txt > out.txt`.") from None


def _row_text(row: Any, text_key: str, where: str) -> str | None:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        if text_key not in row:
            keys = ", ".join(map(repr, list(row)[:10]))
            raise DataError(f"{where}: the object has no key {text_key!r} (its keys: {keys}). Set data.text_key to "
                            f"the field holding the text.")
        value = row[text_key]
        if value is None or isinstance(value, str):
            return value
    raise DataError(f"{where}: expected a string or an object with a string {text_key!r} field, got "
                    f"{type(row).__name__}{'' if not isinstance(row, dict) else ' with a non-string value'}.")


def _read_jsonl(path: Path, key: str, text_key: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(_decode(path, key).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"data.{key}: {path}:{lineno}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e}). JSONL needs one JSON object per line; fix or "
                            f"remove that line.") from None
        texts.append(_row_text(row, text_key, where))
    return _strip_all(texts)


def _read_json(path: Path, key: str, text_key: str) -> list[str]:
    where = f"data.{key}: {path}"
    try:
        data = orjson.loads(_decode(path, key))
    except orjson.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e}). Fix the file or convert it to JSONL.") from None
    if isinstance(data, dict):
        rows = next((data[k] for k in (text_key, "texts") if isinstance(data.get(k), list)), None)
    else:
        rows = data
    if not isinstance(rows, list):
        raise DataError(f"{where}: expected a list of objects or {{{text_key!r}: [...]}} / {{'texts': [...]}}, "
                        f"got {type(data).__name__}. Reshape the file or use JSONL.")
    return _strip_all([_row_text(row, text_key, f"{where} item {i}") for i, row in enumerate(rows)])


def _read_parquet(path: Path, key: str, text_key: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if text_key not in schema.names:
            raise DataError(f"data.{key}: {path} has no column {text_key!r} (columns: "
                            f"{', '.join(schema.names)}). Set data.text_key to the column holding the text.")
        column = pq.read_table(path, columns=[text_key]).column(text_key)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"data.{key}: {path} is not a readable Parquet file ({e}).") from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"data.{key}: {path} column {text_key!r} holds {column.type}, not strings. Set "
                        f"data.text_key to the text column.")
    return _strip_all(column.to_pylist())


def _hf_dataset(cfg: DataConfig, split: str) -> Any:
    name = cfg.source.removeprefix("hf:")
    advice = (f"Download the dataset files (for TinyStories: TinyStoriesV2-GPT4-train.txt and -valid.txt) and use "
              f"data.source = \"text\" with data.train / data.valid pointing at them.")
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.source = {cfg.source!r} needs the `datasets` package, which is not installed "
                        f"(pip install 'slmtrain[hf]'). Or: {advice}") from None
    hf_split = "train" if split == "train" else "validation"
    try:
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as e:  # offline, unknown dataset or split: `datasets` raises many types
        raise DataError(f"data.source = {cfg.source!r}: cannot load split {hf_split!r} from the Hugging Face hub "
                        f"({type(e).__name__}: {e}). No network? {advice}") from None
    if cfg.text_key not in ds.column_names:
        raise DataError(f"data.source = {cfg.source!r} has no column {cfg.text_key!r} (columns: "
                        f"{', '.join(ds.column_names)}). Set data.text_key.")
    return ds


def _hf_documents(cfg: DataConfig, split: str) -> list[str]:
    docs = _strip_all(_hf_dataset(cfg, split)[cfg.text_key])
    if not docs:
        raise DataError(f"data.source = {cfg.source!r}: the {split} split holds no documents.")
    return docs
