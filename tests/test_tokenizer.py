"""Tokenizers: GPT-2 from local files (exact ids), the hub fallback, trained BPE determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmtrain.config import TokenizerConfig
from slmtrain.data.tokenizer import Tokenizer, build_tokenizer, train_bpe
from slmtrain.errors import DataError

TEXTS = ["Once upon a time", "Héllo wörld 🙂\n\ttabs  and  spaces ", "", "日本語のテキスト", "a" * 300]


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


def test_gpt2_fast_encoder_gives_the_same_ids_on_real_tinystories(gpt2: Tokenizer, shared_data: Path) -> None:
    import tiktoken  # noqa: F401 - a declared dependency: a missing one must fail here, not skip

    from slmtrain.data.tokenizer import Tokenizer as Tok

    assert gpt2._tiktoken is not None  # GPT-2's files take the fast path
    text = (shared_data / "tinystories" / "valid.txt").read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    docs += ["  two  spaces\n\n\nnewlines\t tabs  ", "I'm sure they'll've 1,234.5 — “quoted” 😀 ünïcödé",
             "a <|endoftext|> inside", "'S 'LL 'Re", " ", "", "\u00a0\u3000x"]
    plain = Tok.from_json(gpt2.to_json())  # the same vocabulary through `tokenizers` alone
    assert plain._tiktoken is None
    assert gpt2.encode_batch(docs) == plain.encode_batch(docs)
    assert len(docs) > 1000
