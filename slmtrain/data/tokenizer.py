"""Tokenizers: the GPT-2 byte-level BPE (local files or the hub) and a byte-level BPE trained here.

Both wrap `tokenizers.Tokenizer` (the Rust library, not transformers). A tokenizer is identified
by its canonical JSON: `fingerprint` is the sha256 of it, so a run, its prepared data and its
checkpoints can prove they share one vocabulary. Bulk encoding goes through tiktoken's faster
encoder whenever `_tiktoken_compatible` proves it gives the same ids (GPT-2's BPE and the BPEs
trained here do).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import tiktoken
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer

from slmtrain.config import TokenizerConfig
from slmtrain.errors import DataError
from slmtrain.fsio import atomic_write_text

EOS_TOKEN = "<|endoftext|>"
# A hub repository id ("gpt2", "org/name"); anything else that is not a local path is a typo'd path.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


# GPT-2's pre-tokenizer, as the ByteLevel pre-tokenizer of `tokenizers` applies it:
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# factored, which tiktoken's backtracking regex runs ~25% faster. Same pieces: the contractions differ in
# their second character, and after the optional space the three runs in their first (letter, digit,
# other non-space), so where the original's first matching alternative is one of a group, the group
# picks that same one, and where none of a group's alternatives matches the group fails.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?(?:\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+)|\s+(?!\S)|\s+"""


def _byte_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


# Fingerprints of tokenizers known to pass `_tiktoken_compatible` (tests/test_tokenizer.py runs it on them
# again): GPT-2's BPE as loaded from vocab.json + merges.txt. The check costs ~0.2 s of CPU for GPT-2's
# 50,000 merges, as much as encoding 2 MB; another file or another serialization is checked.
_COMPATIBLE = frozenset({"f00392b2aa525a9fdf48e4645feadc55b4ea3af0a345977fb01021d3b269c5d0"})


def _tiktoken_compatible(spec: dict[str, Any], model: models.Model, eos_id: int) -> bool:
    """Whether tiktoken, given `_mergeable_ranks`, encodes exactly as the tokenizer `spec` (its parsed JSON).

    tiktoken merges the adjacent pair whose concatenation has the lowest id; `tokenizers` merges the
    pair listed first among the merges. They give the same ids when (a) the pipeline is GPT-2's
    byte-level one (no normalizer, truncation or padding; `<|endoftext|>` the only added token,
    matched literally), (b) every token but the 256 bytes and EOS comes from exactly one merge, with
    ids growing in merge order, and (c) `tokenizers` encodes each token's bytes alone as that token.
    Proof sketch: in any state the merge list reaches, two adjacent parts spelling a token t cover a
    span that has evolved exactly as t alone does, which by (c) ends as t, so the two parts are t's own
    merge; both algorithms therefore see the same candidates in the same order. tiktoken's shortcut
    for a piece that is a whole token is right by (c). GPT-2's BPE and BPEs trained here pass. Strictly
    increasing ids also make the merge results distinct.
    """
    m, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    added = spec.get("added_tokens") or []
    if not (m.get("type") == "BPE" and m.get("dropout") is None and not m.get("ignore_merges")
            and not m.get("continuing_subword_prefix") and not m.get("end_of_word_suffix")
            and not m.get("byte_fallback") and spec.get("normalizer") is None
            and spec.get("truncation") is None and spec.get("padding") is None
            and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True)
            and len(added) == 1 and added[0].get("content") == EOS_TOKEN and added[0].get("id") == eos_id
            and not any(added[0].get(k) for k in ("single_word", "lstrip", "rstrip"))):
        return False
    vocab: dict[str, int] = m["vocab"]
    # tokenizers < 0.20 writes a merge as "left right"; byte-level tokens hold no spaces.
    merged = ["".join(pair.split(" ") if isinstance(pair, str) else pair) for pair in m["merges"]]
    ids = [vocab.get(t, -1) for t in merged]
    if (-1 in ids or EOS_TOKEN in merged or any(a >= b for a, b in zip(ids, ids[1:]))
            or set(vocab) - {EOS_TOKEN} != set(merged) | set(_byte_unicode().values())):
        return False
    # (c) through `tokenizers` itself, on its own threads: byte-level tokens hold no whitespace, so the
    # space-joined tokens must come back as exactly their ids, one each.
    bare = _RustTokenizer(model)
    bare.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    n = 4 * (os.cpu_count() or 1)
    batches = [" ".join(merged[k * len(merged) // n:(k + 1) * len(merged) // n]) for k in range(n)]
    return list(itertools.chain.from_iterable(e.ids for e in bare.encode_batch_fast(batches))) == ids


def _mergeable_ranks(vocab: dict[str, int]) -> dict[bytes, int]:
    """tiktoken's form of a byte-level vocabulary: each token's bytes -> its id (EOS left to the specials)."""
    to_byte = str.maketrans({c: chr(b) for b, c in _byte_unicode().items()})
    return {token.translate(to_byte).encode("latin-1"): i for token, i in vocab.items() if token != EOS_TOKEN}


def _tiktoken_array(enc: tiktoken.Encoding, text: str, dtype: np.dtype) -> np.ndarray:
    """`enc.encode(text)` (EOS allowed) as an array of `dtype`.

    tiktoken >= 0.8 hands the ids over as one buffer: no Python int per token, which the calling thread
    would build holding the GIL (~60 ms per 2M tokens, serializing the encoding threads).
    """
    if hasattr(enc, "encode_to_numpy"):
        try:
            ids = enc.encode_to_numpy(text, allowed_special={EOS_TOKEN})
        except UnicodeEncodeError:  # lone surrogates: `encode` replaces them, as it always did here
            pass
        else:
            if ids.size and dtype.itemsize < ids.itemsize and ids.max() > np.iinfo(dtype).max:
                raise OverflowError(f"token id {ids.max()} does not fit {dtype}")  # as np.array would say
            return ids.astype(dtype)  # a copy: the buffer tiktoken lends is read-only
    return np.array(enc.encode(text, allowed_special={EOS_TOKEN}), dtype=dtype)


def expand_path(path: str) -> Path:
    """`~` and `$VARS` expanded; relative paths stay relative to the working directory."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


class Tokenizer:
    """A text <-> token id codec with an end-of-text token and a stable identity.

    Args:
        inner: the `tokenizers.Tokenizer`; it must know `<|endoftext|>`.
        source: where it came from, for error messages.

    Raises:
        DataError: the tokenizer has no `<|endoftext|>` token.
    """

    def __init__(self, inner: _RustTokenizer, source: str = "tokenizer") -> None:
        eos = inner.token_to_id(EOS_TOKEN)
        if eos is None:
            raise DataError(f"{source}: the tokenizer has no {EOS_TOKEN!r} token, which slmtrain uses to separate "
                            f"documents. Use a GPT-2 style tokenizer or tokenizer.kind = \"bpe\".")
        self._tk = inner
        self._eos = int(eos)

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included (the model's embedding needs at least this)."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (an `<|endoftext|>` inside the text maps to EOS)."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once, on every core."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_batch(list(texts), num_threads=os.cpu_count() or 1,
                                               allowed_special={EOS_TOKEN})
        # The "fast" variant skips offset tracking, which nothing here needs (~20% faster).
        return [e.ids for e in self._tk.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_stream(self, texts: Sequence[str], dtype: np.dtype | type = np.uint32) -> np.ndarray:
        """The ids of every text, each followed by EOS, as one flat array: `prepare`'s token stream.

        Equal to concatenating `encode(t) + [eos_id]` over `texts`. With tiktoken it is one call on the
        texts joined by `<|endoftext|>` in the calling thread (which tiktoken lets run without the
        GIL, so threads encode chunks in parallel); that is exact because the special token is cut out
        before the text is split into pieces, so no piece spans two texts.
        """
        if self._tiktoken is not None:
            joined = EOS_TOKEN.join(texts) + EOS_TOKEN if texts else ""
            return _tiktoken_array(self._tiktoken, joined, np.dtype(dtype))
        # `tokenizers` spreads a batch over its own threads; texts stay separate, since a normalizer or an
        # added token's strip options could act across a join.
        ids = [e.ids for e in self._tk.encode_batch_fast(list(texts), add_special_tokens=False)]
        for x in ids:
            x.append(self._eos)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids)))

    @cached_property
    def _tiktoken(self) -> tiktoken.Encoding | None:
        """tiktoken's encoder over this BPE's ranks when it gives exactly the same ids, else None."""
        if self.fingerprint in _COMPATIBLE:
            # The fingerprint pins the JSON, so the model's own vocabulary is the JSON's; asking the Rust
            # side for it takes half the time of parsing the whole JSON again (~25 ms of GPT-2's ~50).
            vocab = self._tk.get_vocab(with_added_tokens=False)
        else:
            spec = orjson.loads(self.to_json())
            if not _tiktoken_compatible(spec, self._tk.model, self._eos):
                return None
            vocab = spec["model"]["vocab"]
        return tiktoken.Encoding(name="slmtrain-bpe", pat_str=_GPT2_PATTERN, mergeable_ranks=_mergeable_ranks(vocab),
                                 special_tokens={EOS_TOKEN: self._eos})

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are kept so EOS shows up as `<|endoftext|>`."""
        return self._tk.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): equal tokenizers give equal strings.

        `save` writes exactly these bytes, so a saved file's sha256 is the fingerprint.
        """
        return self._canonical

    @cached_property
    def _canonical(self) -> str:
        return orjson.dumps(orjson.loads(self._tk.to_str()), option=orjson.OPT_SORT_KEYS).decode("utf-8")

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex digest of `to_json()`."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the canonical JSON to `path` atomically."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer JSON") -> Tokenizer:
        """Rebuild from `to_json()` output (or any `tokenizers` JSON).

        Raises:
            DataError: the text is not a tokenizer.
        """
        try:
            inner = _RustTokenizer.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception with serde's message
            raise DataError(f"{source} is not a valid tokenizer file ({e}). Regenerate it or point "
                            f"tokenizer.path at a tokenizer.json written by the `tokenizers` library.") from None
        return cls(inner, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer JSON file.

        Raises:
            DataError: the file is missing, unreadable or not a tokenizer.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read tokenizer file {str(path)!r}: {e}") from None
        return cls.from_json(text, source=f"tokenizer file {str(path)!r}")


def _byte_level(inner: _RustTokenizer) -> _RustTokenizer:
    # GPT-2 conventions: no prefix space (so "Hello" at the start of a text is one token) and the
    # byte-to-unicode mapping undone on decode.
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return inner


def _load_gpt2(cfg: TokenizerConfig) -> Tokenizer:
    path = expand_path(cfg.path)
    if path.is_file():
        return Tokenizer.from_file(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(path / "tokenizer.json")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise DataError(f"tokenizer.path = {cfg.path!r}: directory {str(path)!r} holds neither tokenizer.json "
                            f"nor vocab.json + merges.txt. Point it at a directory with the GPT-2 tokenizer files.")
        try:
            bpe = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:
            raise DataError(f"tokenizer.path = {cfg.path!r}: cannot read {str(vocab)!r} / {str(merges)!r} as GPT-2 "
                            f"BPE files ({e}). Replace them with the original vocab.json and merges.txt.") from None
        inner = _byte_level(_RustTokenizer(bpe))
        inner.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
        return Tokenizer(inner, source=f"tokenizer.path = {cfg.path!r}")
    if not _HUB_NAME.fullmatch(cfg.path):
        raise DataError(f"tokenizer.path = {cfg.path!r}: {str(path)!r} does not exist. Point it at a directory "
                        f"holding vocab.json + merges.txt (or tokenizer.json) of the GPT-2 tokenizer.")
    return _from_hub(cfg.path)


def _from_hub(name: str) -> Tokenizer:
    try:
        inner = _RustTokenizer.from_pretrained(name)
    except Exception as e:  # network, hub and file errors come in many types; all mean "not available"
        raise DataError(f"tokenizer.path = {name!r}: no local directory of that name, and the Hugging Face hub "
                        f"could not provide it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                        f"Offline? Download vocab.json and merges.txt (or tokenizer.json) and set tokenizer.path "
                        f"to that local directory.") from None
    return Tokenizer(inner, source=f"hub tokenizer {name!r}")


def train_bpe(docs: Sequence[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a byte-level BPE on `docs`; deterministic for equal inputs.

    Every one of the 256 bytes is in the initial alphabet, so any text encodes. `vocab_size`
    counts the special token `<|endoftext|>` (id 0) and the 256 byte tokens.
    """
    inner = _byte_level(_RustTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    inner.train_from_iterator(docs, trainer, length=len(docs))
    return Tokenizer(inner, source="trained BPE")


def build_tokenizer(cfg: TokenizerConfig, train_docs: Sequence[str]) -> Tokenizer:
    """The tokenizer `cfg` describes.

    Args:
        cfg: kind "gpt2" loads `cfg.path` (a directory with vocab.json + merges.txt or
            tokenizer.json, a tokenizer.json file, or a hub name such as "gpt2"); kind "bpe" trains
            on the first `cfg.train_documents` of `train_docs` (0: all).
        train_docs: the training documents (unused for gpt2).

    Raises:
        DataError: files missing or invalid, the hub unreachable, or no documents to train on.
    """
    if cfg.kind == "gpt2":
        return _load_gpt2(cfg)
    docs = train_docs[: cfg.train_documents] if cfg.train_documents else train_docs
    if not docs:
        raise DataError("tokenizer.kind = \"bpe\" needs training documents, and the training split is empty.")
    return train_bpe(docs, cfg.vocab_size, cfg.min_frequency)
