"""Tokenizers: GPT-2 from local files (exact ids), the hub fallback, trained BPE determinism, and the
tiktoken fast path, which must give the ids `tokenizers` itself gives or not be taken."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as RawTokenizer

from slmtrain.config import TokenizerConfig
from slmtrain.data.tokenizer import (
    _COMPATIBLE, EOS_TOKEN, Tokenizer, _byte_unicode, _tiktoken_compatible, build_tokenizer, train_bpe,
)
from slmtrain.errors import DataError

TEXTS = ["Once upon a time", "Héllo wörld 🙂\n\ttabs  and  spaces ", "", "日本語のテキスト", "a" * 300]
# Where a joined stream or a rank-based encoder could go wrong: separators, whitespace runs, EOS inside
# or cut off at either end of a text, contractions, long pieces.
TRICKY = ["  two  spaces\n\n\nnewlines\t tabs  ", "I'm sure they'll've 1,234.5 — “quoted” 😀 ünïcödé",
          "a <|endoftext|> inside", "<|endoftext|>", "ends in <|endoftext", "|>starts so", "<|endof", "'S 'LL 'Re",
          " ", "", "\u00a0\u3000x", "\r\n\r\n x", "b" * 2000, "ab" * 700, "ééé " * 50]


def _reference(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids the `tokenizers` library gives for `tok`'s JSON on its own: what every fast path must match."""
    raw = RawTokenizer.from_str(tok.to_json())
    return [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)]


def _stream(ids: list[list[int]], eos: int) -> list[int]:
    return [i for x in ids for i in (*x, eos)]


def _assert_same_ids(tok: Tokenizer, texts: list[str]) -> None:
    ref = _reference(tok, texts)
    assert [tok.encode(t) for t in texts] == ref
    assert tok.encode_batch(texts) == ref
    stream = tok.encode_stream(texts, np.uint32)
    assert stream.dtype == np.uint32 and stream.tolist() == _stream(ref, tok.eos_id)


@pytest.fixture(scope="module")
def gpt2_dir(shared_data: Path) -> Path:
    path = shared_data / "gpt2"
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        pytest.skip(f"GPT-2 tokenizer files are absent from {path}")
    return path


@pytest.fixture(scope="module")
def gpt2(gpt2_dir: Path) -> Tokenizer:
    return build_tokenizer(TokenizerConfig(kind="gpt2", path=str(gpt2_dir)), [])


@pytest.fixture(scope="module")
def story_docs() -> list[str]:
    from slmtrain.data.stories import generate_stories

    return generate_stories(300, 5)


def test_gpt2_known_ids_and_roundtrip(gpt2: Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Once upon a time there was") == [4874, 2402, 257, 640, 612, 373]
    assert gpt2.eos_id == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.encode("<|endoftext|>") == [50256]
    for text in TEXTS:
        assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.encode_batch(TEXTS) == [gpt2.encode(t) for t in TEXTS]


def test_gpt2_canonical_json_save_and_reload(gpt2: Tokenizer, tmp_path: Path, gpt2_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    canonical = gpt2.to_json()
    assert json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False) == canonical
    gpt2.save(tmp_path / "tokenizer.json")
    assert hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest() == gpt2.fingerprint
    # A directory holding tokenizer.json and the file itself (through a $VAR) give the same tokenizer.
    monkeypatch.setenv("SLM_TEST_TOK", str(tmp_path))
    for path in (str(tmp_path), "$SLM_TEST_TOK/tokenizer.json"):
        other = build_tokenizer(TokenizerConfig(kind="gpt2", path=path), [])
        assert other.fingerprint == gpt2.fingerprint
        assert other.encode("Hello world") == [15496, 995]
    assert Tokenizer.from_json(canonical).fingerprint == gpt2.fingerprint


def test_gpt2_bad_paths_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path=str(missing)), [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*vocab.json"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path=str(tmp_path / "empty")), [])
    (tmp_path / "junk.json").write_text("{not a tokenizer")
    with pytest.raises(DataError, match="junk.json"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path=str(tmp_path / "junk.json")), [])


def test_gpt2_hub_name_offline_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = pytest.importorskip("huggingface_hub.constants")
    # Offline with an empty cache: the lookup must fail fast and say what to do instead.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no local directory called "gpt2"
    with pytest.raises(DataError, match="tokenizer.path.*local directory"):
        build_tokenizer(TokenizerConfig(kind="gpt2", path="gpt2"), [])


def test_tokenizer_without_eos_is_rejected() -> None:
    from tokenizers import Tokenizer as Raw
    from tokenizers import models

    with pytest.raises(DataError, match="endoftext"):
        Tokenizer(Raw(models.BPE()))


def test_trained_bpe_encodes_anything_and_is_deterministic(story_docs: list[str]) -> None:
    cfg = TokenizerConfig(kind="bpe", vocab_size=512, min_frequency=2, train_documents=200)
    a = build_tokenizer(cfg, story_docs)
    b = build_tokenizer(cfg, list(story_docs))
    assert a.to_json() == b.to_json() and a.fingerprint == b.fingerprint
    assert a.vocab_size == 512
    assert a.eos_id == 0 and a.decode([a.eos_id]) == "<|endoftext|>"
    for text in TEXTS + story_docs[:3]:
        ids = a.encode(text)
        assert all(0 <= i < a.vocab_size for i in ids)
        assert a.decode(ids) == text
    # Only the first train_documents documents count: a change after them changes nothing.
    c = build_tokenizer(cfg, story_docs[:200] + ["zzz qqq " * 50] * 100)
    assert c.fingerprint == a.fingerprint
    # Merges are learned: a story takes far fewer tokens than bytes.
    assert len(a.encode(story_docs[0])) < len(story_docs[0].encode()) / 2


def test_trained_bpe_same_across_processes(story_docs: list[str]) -> None:
    # Hash maps in the Rust trainer are seeded per process; the result must not depend on that.
    code = ("import sys; from slmtrain.data.stories import generate_stories; "
            "from slmtrain.data.tokenizer import train_bpe; "
            "sys.stdout.write(train_bpe(generate_stories(300, 5), 400, 2).fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == train_bpe(story_docs, 400, 2).fingerprint


def test_bpe_needs_documents_and_json_must_parse() -> None:
    with pytest.raises(DataError, match="training split is empty"):
        build_tokenizer(TokenizerConfig(kind="bpe"), [])
    with pytest.raises(DataError, match="not a valid tokenizer"):
        Tokenizer.from_json('{"model": 3}')


def _tinystories(shared_data: Path, name: str) -> list[str]:
    path = shared_data / "tinystories" / name
    if not path.is_file():
        pytest.skip(f"real TinyStories is absent: {path} (put the shared data beside the repository, or set "
                    f"SLMTRAIN_SHARED_DATA)")
    return [d.strip() for d in path.read_text(encoding="utf-8").split(EOS_TOKEN) if d.strip()]


def test_gpt2_fast_encoder_gives_the_same_ids_on_real_tinystories(gpt2: Tokenizer, shared_data: Path) -> None:
    # GPT-2's files pass the equivalence check, which is why loading them may skip it.
    assert gpt2.fingerprint in _COMPATIBLE
    assert _tiktoken_compatible(json.loads(gpt2.to_json()), gpt2._tk.model, gpt2.eos_id)
    assert gpt2._tiktoken is not None
    docs = _tinystories(shared_data, "valid.txt")
    assert len(docs) > 1000
    _assert_same_ids(gpt2, docs + TRICKY + TEXTS)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(alphabet="'sStdmlvreLé日1٣²_. !?\n\t\u00a0\u3000", max_size=30), max_size=8))
def test_gpt2_fast_encoder_splits_pieces_as_tokenizers_does(gpt2: Tokenizer, texts: list[str]) -> None:
    # tiktoken's pattern is GPT-2's factored: contractions next to other apostrophes and letters, letters
    # next to digits and symbols, every kind of whitespace run, so any piece split differently shows up.
    assert gpt2.encode_stream(texts, np.uint32).tolist() == _stream([gpt2.encode(t) for t in texts], gpt2.eos_id)


def test_trained_bpe_fast_encoder_gives_the_same_ids_on_real_tinystories(shared_data: Path) -> None:
    valid, train = _tinystories(shared_data, "valid.txt"), _tinystories(shared_data, "train.txt")
    tok = train_bpe(valid, 2048, 2)
    assert tok._tiktoken is not None
    _assert_same_ids(tok, valid[:300] + train[:600] + TRICKY + TEXTS)


def test_trained_bpe_fast_encoder_gives_the_same_ids(story_docs: list[str]) -> None:
    tok = train_bpe(story_docs, 600, 2)
    assert tok._tiktoken is not None
    _assert_same_ids(tok, story_docs + TRICKY + TEXTS)
    # A reloaded copy takes the fast path too, and an empty batch is an empty stream.
    again = Tokenizer.from_json(tok.to_json())
    assert again._tiktoken is not None and again.encode_stream([]).size == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=st.lists(st.text(alphabet="ab c\n'é!", min_size=1, max_size=40), min_size=1, max_size=40),
       vocab_size=st.integers(258, 330), probes=st.lists(st.text(alphabet="ab c\n'é!<|>", max_size=60), max_size=20))
def test_any_trained_bpe_takes_the_fast_path_with_the_same_ids(corpus: list[str], vocab_size: int,
                                                              probes: list[str]) -> None:
    # Tiny alphabets force long merge chains over overlapping pairs ("aaa", "abab"), where an encoder
    # ranking merged tokens rather than pairs would first disagree with `tokenizers`.
    tok = train_bpe(corpus, vocab_size, 1)
    assert tok._tiktoken is not None
    _assert_same_ids(tok, corpus + probes)


def _byte_level_bpe(merges: list[tuple[str, str]], normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet), start=1)} | {EOS_TOKEN: 0}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    inner = RawTokenizer(models.BPE(vocab=vocab, merges=merges))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    inner.normalizer = normalizer
    inner.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    return Tokenizer(inner)


def test_fast_path_is_refused_where_it_would_change_ids() -> None:
    # "abc" is a token, but the merge list reaches it only from "ab" + "c", while "bc" merges first:
    # `tokenizers` gives a + bc; a rank-based encoder would give the whole token.
    odd = _byte_level_bpe([("b", "c"), ("a", "b"), ("ab", "c")])
    ids = {t: odd._tk.token_to_id(t) for t in ("a", "bc", "ab", "abc")}
    assert odd.encode("abc") == [ids["a"], ids["bc"]]
    ranks = {bytes([b]): odd._tk.token_to_id(c) for b, c in _byte_unicode().items()}
    ranks |= {t.encode(): ids[t] for t in ("bc", "ab", "abc")}
    naive = tiktoken.Encoding(name="naive", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    assert naive.encode("abc") == [ids["abc"]]
    assert odd._tiktoken is None
    _assert_same_ids(odd, ["abc", "xabcx abc", "bcab"] + TRICKY)
    # A normalizer acts before the split into pieces: also the slow path, still exact.
    lowered = _byte_level_bpe([("a", "b")], normalizers.Lowercase())
    assert lowered._tiktoken is None
    _assert_same_ids(lowered, ["ABab", "Ab <|endoftext|>AB"] + TRICKY)
    # Without the odd merge the same construction is an ordinary BPE and is accepted.
    assert _byte_level_bpe([("b", "c"), ("a", "bc")])._tiktoken is not None

