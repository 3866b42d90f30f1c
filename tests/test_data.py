"""Data pipeline: sources, token files, cached preparation, random windows and the resumable loader."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from slmtrain.config import Config, DataConfig, RunConfig, TokenizerConfig
from slmtrain.data import prepare as prepare_mod
from slmtrain.data.prepare import (
    HEADER_SIZE, PrepareInterrupted, open_tokens, prepare_data, read_header, token_dtype, write_tokens,
)
from slmtrain.data.sources import load_documents, load_splits, source_fingerprint, source_fingerprints
from slmtrain.data.stories import generate_stories
from slmtrain.data.stream import (
    MicroBatchSampler, WindowDataset, build_train_loader, eval_batches, splitmix64, window_starts,
)
from slmtrain.errors import DataError

BPE = TokenizerConfig(kind="bpe", vocab_size=320, min_frequency=2, train_documents=0)


def _cfg(tmp: Path, data: DataConfig, tokenizer: TokenizerConfig = BPE) -> Config:
    return Config(run=RunConfig(out_dir=str(tmp / "runs")), data=data, tokenizer=tokenizer)


def _write_text(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(f"{d}\n<|endoftext|>\n" for d in docs), encoding="utf-8")
    return path


def _reference_stream(tokenizer_json: Path, docs: list[str]) -> list[int]:
    """Each document's ids from the `tokenizers` library alone, EOS after each: the stream prepare must write."""
    from tokenizers import Tokenizer as Raw

    raw = Raw.from_file(str(tokenizer_json))
    eos = raw.token_to_id("<|endoftext|>")
    return [i for e in raw.encode_batch(docs, add_special_tokens=False) for i in (*e.ids, eos)]


def _segments(tokens: np.ndarray, eos: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(tokens == eos)
    return np.split(tokens, cuts + 1)[:-1]


# ---------------------------------------------------------------- sources

def test_text_source_splits_on_endoftext_and_sorts_directories(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    (d / "b.txt").write_text("  two \n<|endoftext|>\n\n<|endoftext|>three<|endoftext|>")
    (d / "a.txt").write_text("\ufeffone\nline two of one\n<|endoftext|>\n")
    (d / "sub" / "c.txt").write_text("four")
    (d / ".hidden" / "x.txt").write_text("hidden")
    (d / "notes.md").write_text("ignored")
    cfg = DataConfig(source="text", train=str(d), valid=str(d / "sub" / "c.txt"))
    assert load_documents(cfg, "train") == ["one\nline two of one", "two", "three", "four"]
    assert load_documents(cfg, "valid") == ["four"]
    assert load_documents(replace(cfg, max_documents=2), "train") == ["one\nline two of one", "two"]


def test_jsonl_json_and_parquet_sources(tmp_path: Path) -> None:
    rows = [{"story": f"story {i}", "id": i} for i in range(5)]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n" + json.dumps({"story": None}) + "\n")
    assert load_documents(DataConfig(source="jsonl", train=str(jl), valid=str(jl), text_key="story"),
                          "valid") == ["story 0", "story 1", "story 2"]
    listed, wrapped = tmp_path / "list.json", tmp_path / "wrapped.json"
    listed.write_text(json.dumps(rows))
    wrapped.write_text(json.dumps({"texts": ["x", " ", "y"]}))
    assert load_documents(DataConfig(source="jsonl", train=str(listed), text_key="story", valid_fraction=0.2),
                          "valid") == ["story 2"]
    assert load_documents(DataConfig(source="jsonl", train=str(wrapped), valid=str(wrapped)), "train") == ["x", "y"]

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": [1, 2, 3], "content": ["alpha", None, " beta "]}), tmp_path / "p.parquet")
    cfg = DataConfig(source="parquet", train=str(tmp_path), valid=str(tmp_path / "p.parquet"), text_key="content")
    assert load_documents(cfg, "train") == ["alpha", "beta"]


def test_holdout_is_disjoint_deterministic_and_sized(tmp_path: Path) -> None:
    docs = [f"document number {i}" for i in range(100)]
    cfg = DataConfig(source="text", train=str(_write_text(tmp_path / "t.txt", docs)), valid_fraction=0.1)
    train, valid = load_documents(cfg, "train"), load_documents(cfg, "valid")
    assert len(valid) == 10 and len(train) == 90
    assert sorted(train + valid) == sorted(docs)
    assert load_documents(cfg, "valid") == valid
    assert load_splits(cfg) == {"train": train, "valid": valid}  # one read of the file, the same split
    assert load_splits(replace(cfg, max_documents=7)) == {"train": train[:7], "valid": valid}
    with pytest.raises(DataError, match="valid_fraction is 0"):
        load_documents(replace(cfg, valid_fraction=0.0), "valid")


def test_builtin_splits_are_fixed_and_disjoint() -> None:
    cfg = DataConfig(builtin_train_stories=60, builtin_valid_stories=10)
    train, valid = load_documents(cfg, "train"), load_documents(cfg, "valid")
    assert len(train) == 60 and len(valid) == 10 and not set(train) & set(valid)
    assert load_documents(cfg, "train") == train


def test_fingerprints_follow_content_and_keys(tmp_path: Path) -> None:
    docs = [f"doc {i}" for i in range(20)]
    a = _write_text(tmp_path / "a.txt", docs)
    cfg = DataConfig(source="text", train=str(a))
    fp = source_fingerprint(cfg, "train")
    shutil.copy(a, tmp_path / "moved.txt")
    assert source_fingerprint(replace(cfg, train=str(tmp_path / "moved.txt")), "train") == fp
    assert source_fingerprint(replace(cfg, valid_fraction=0.05), "train") != fp
    assert source_fingerprint(replace(cfg, max_documents=5), "train") != fp
    assert source_fingerprint(cfg, "valid") != fp
    _write_text(a, docs + ["one more"])
    assert source_fingerprint(cfg, "train") != fp
    # With an explicit valid file, training-only keys do not touch the valid fingerprint.
    with_valid = replace(cfg, valid=str(tmp_path / "moved.txt"))
    assert source_fingerprint(with_valid, "valid") == source_fingerprint(replace(with_valid, max_documents=3), "valid")
    b = DataConfig(builtin_train_stories=100)
    assert source_fingerprint(b, "train") != source_fingerprint(replace(b, builtin_train_stories=101), "train")
    assert source_fingerprint(b, "valid") == source_fingerprint(replace(b, builtin_train_stories=101), "valid")
    # Both splits at once (one hash per file) are the splits' own fingerprints, shared file or not.
    for both in (cfg, with_valid, b):
        assert source_fingerprints(both) == {s: source_fingerprint(both, s) for s in ("train", "valid")}


def _bad_inputs(tmp: Path) -> list[tuple[DataConfig, str]]:
    (tmp / "blank.txt").write_text("\n <|endoftext|>\n\n<|endoftext|>")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    (tmp / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": oops}\n')
    (tmp / "nokey.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["x"]}), tmp / "nocol.parquet")
    return [
        (DataConfig(source="text", train=str(tmp / "missing.txt")), r"data\.train.*missing\.txt.*does not exist"),
        (DataConfig(source="text", train=str(tmp / "blank.txt")), r"blank\.txt.*no documents"),
        (DataConfig(source="text", train=str(tmp / "latin1.txt")), r"latin1\.txt.*UTF-8.*byte offset 3"),
        (DataConfig(source="jsonl", train=str(tmp / "bad.jsonl")), r"bad\.jsonl:3.*not valid JSON"),
        (DataConfig(source="jsonl", train=str(tmp / "nokey.jsonl")), r"nokey\.jsonl:2.*no key 'text'"),
        (DataConfig(source="parquet", train=str(tmp / "nocol.parquet")), r"nocol\.parquet.*no column 'text'"),
        (DataConfig(source="text", train=str(tmp / "blank.txt"), valid=str(tmp / "gone.txt")),
         r"data\.valid.*gone\.txt"),
    ]


def test_bad_inputs_raise_data_error_naming_the_file(tmp_path: Path) -> None:
    for cfg, pattern in _bad_inputs(tmp_path):
        split = "valid" if cfg.valid else "train"
        with pytest.raises(DataError, match=pattern):
            load_documents(cfg, split)
    # Through prepare_data too, and nothing is left in the cache.
    with pytest.raises(DataError, match="missing.txt"):
        prepare_data(_cfg(tmp_path, DataConfig(source="text", train=str(tmp_path / "missing.txt"))), log=lambda _: None)
    assert not list((tmp_path / "runs").glob("**/*.tmp-*"))


def test_hf_source_without_datasets_explains_the_fallback() -> None:
    try:
        import datasets  # noqa: F401
        pytest.skip("`datasets` is installed; the offline error path is not reachable this way")
    except ImportError:
        pass
    with pytest.raises(DataError, match='datasets.*data.source = "text"'):
        load_documents(DataConfig(source="hf:roneneldan/TinyStories"), "train")


# ---------------------------------------------------------------- token files

def test_token_file_roundtrip_and_validation(tmp_path: Path) -> None:
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    p16 = tmp_path / "a.bin"
    assert write_tokens(p16, [np.array([1, 2]), [3, 4, 5], np.arange(3)], np.uint16, eos=5) == 8
    assert read_header(p16) == {"version": 1, "dtype": np.dtype(np.uint16), "n_tokens": 8, "eos_id": 5}
    assert open_tokens(p16).tolist() == [1, 2, 3, 4, 5, 0, 1, 2]
    p32 = tmp_path / "b.bin"
    write_tokens(p32, np.array([70000, 1], dtype=np.int64), np.uint32, eos=1)
    assert open_tokens(p32).tolist() == [70000, 1] and p32.stat().st_size == HEADER_SIZE + 8
    with pytest.raises(ValueError, match="do not fit"):
        write_tokens(tmp_path / "c.bin", np.array([70000]), np.uint16, eos=0)
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]  # the failed write left nothing behind

    cut = tmp_path / "cut.bin"
    cut.write_bytes(p16.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"cut\.bin.*truncated"):
        open_tokens(cut)
    (tmp_path / "short.bin").write_bytes(b"SLMTOKS")
    with pytest.raises(DataError, match=r"short\.bin.*truncated"):
        read_header(tmp_path / "short.bin")
    (tmp_path / "foreign.bin").write_bytes(bytes(range(256)) * 2)
    with pytest.raises(DataError, match=r"foreign\.bin.*not a slmtrain token file"):
        read_header(tmp_path / "foreign.bin")


# ---------------------------------------------------------------- prepare

@pytest.fixture(scope="module")
def builtin_prep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, object, list[str]]:
    tmp = tmp_path_factory.mktemp("builtin")
    cfg = _cfg(tmp, DataConfig(builtin_train_stories=600, builtin_valid_stories=40),
               TokenizerConfig(kind="bpe", vocab_size=512, train_documents=300))
    logs: list[str] = []
    return cfg, prepare_data(cfg, log=logs.append), logs


def test_builtin_prepare_stream_is_well_formed(builtin_prep) -> None:
    cfg, prep, logs = builtin_prep
    tok = prep.tokenizer
    assert prep.dir.parent == Path(cfg.run.out_dir) / ".data" and not prep.reused
    train = open_tokens(prep.train_path)
    docs = load_documents(cfg.data, "train")
    assert len(train) >= 100_000
    assert int(train.max()) < tok.vocab_size == prep.meta["vocab_size"] == 512
    assert int((train == tok.eos_id).sum()) == len(docs) == prep.meta["splits"]["train"]["documents"]
    assert train[-1] == tok.eos_id
    segments = _segments(np.asarray(train), tok.eos_id)
    assert tok.decode(segments[0][:-1].tolist()) == docs[0] and tok.decode(segments[-1][:-1].tolist()) == docs[-1]
    meta = prep.meta["splits"]["train"]
    assert meta["tokens"] == len(train) and meta["bytes"] == sum(len(d.encode()) + 1 for d in docs)
    assert meta["tokens_per_byte"] == pytest.approx(len(train) / meta["bytes"])
    assert read_header(prep.valid_path)["eos_id"] == tok.eos_id == prep.meta["eos_id"]
    assert prep.meta["dtype"] == "uint16" and prep.meta["tokenizer"]["fingerprint"] == tok.fingerprint
    assert any("tokens/s" in line and "MB/s" in line for line in logs)
    assert train.tolist() == _reference_stream(prep.dir / "tokenizer.json", docs)


def test_prepare_reuses_the_cache(builtin_prep) -> None:
    cfg, first, _ = builtin_prep
    before = first.train_path.stat().st_mtime_ns
    again = prepare_data(cfg, log=lambda _: None)
    assert again.reused and again.dir == first.dir and again.seconds < first.seconds
    assert again.train_path.stat().st_mtime_ns == before
    assert again.tokenizer.fingerprint == first.tokenizer.fingerprint and again.meta == first.meta


def test_prepare_rebuilds_on_source_change_and_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _write_text(tmp_path / "c.txt", generate_stories(40, 3))
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, DataConfig(source="text", train=str(corpus), valid_fraction=0.1, cache_dir="$SLM_CACHE"))
    first = prepare_data(cfg, log=lambda _: None)
    assert first.dir.parent == tmp_path / "cache" and first.meta["splits"]["valid"]["documents"] == 4
    _write_text(corpus, generate_stories(41, 3))
    changed = prepare_data(cfg, log=lambda _: None)
    assert not changed.reused and changed.dir != first.dir
    assert changed.meta["splits"]["train"]["documents"] + changed.meta["splits"]["valid"]["documents"] == 41
    with open(changed.train_path, "r+b") as f:
        f.truncate(changed.train_path.stat().st_size - 2)
    logs: list[str] = []
    repaired = prepare_data(cfg, log=logs.append)
    assert not repaired.reused and repaired.dir == changed.dir and any("rebuilding" in s for s in logs)
    assert read_header(repaired.train_path)["n_tokens"] == changed.meta["splits"]["train"]["tokens"]
    assert not list((tmp_path / "cache").glob("*.tmp-*")) and not list((tmp_path / "cache").glob("*.stale-*"))


def test_a_bad_source_is_reported_before_a_bad_tokenizer(tmp_path: Path) -> None:
    # The files are hashed on a thread while the tokenizer loads; the source's error still comes first.
    cfg = _cfg(tmp_path, DataConfig(source="text", train=str(tmp_path / "missing.txt")),
               TokenizerConfig(kind="gpt2", path=str(tmp_path / "no-tokenizer")))
    with pytest.raises(DataError, match=r"data\.train = .*missing\.txt.* does not exist"):
        prepare_data(cfg, log=lambda _: None)
    _write_text(tmp_path / "missing.txt", ["a story"])
    with pytest.raises(DataError, match=r"tokenizer\.path = .*no-tokenizer.* does not exist"):
        prepare_data(cfg, log=lambda _: None)


@pytest.mark.parametrize("stop_at", [1, 2, 6])
def test_interrupted_prepare_leaves_no_partial_cache(tmp_path: Path, stop_at: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_mod, "_CHUNK_CHARS", 2000)  # several chunks in flight when `stop` says so
    cfg = _cfg(tmp_path, DataConfig(builtin_train_stories=50, builtin_valid_stories=5))
    polls = itertools.count(1)
    with pytest.raises(PrepareInterrupted):
        prepare_data(cfg, stop=lambda: next(polls) >= stop_at, log=lambda _: None)
    root = tmp_path / "runs" / ".data"
    assert list(root.iterdir()) == []
    assert not prepare_data(cfg, log=lambda _: None).reused


def test_process_pool_gives_identical_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_mod, "_CHUNK_CHARS", 4000)  # many chunks, so order across workers matters
    data = DataConfig(builtin_train_stories=120, builtin_valid_stories=10)
    serial = prepare_data(_cfg(tmp_path / "a", data), log=lambda _: None)
    pooled = prepare_data(_cfg(tmp_path / "b", replace(data, prepare_workers=2)), log=lambda _: None)
    assert pooled.train_path.read_bytes() == serial.train_path.read_bytes()
    assert pooled.valid_path.read_bytes() == serial.valid_path.read_bytes()


def test_prepare_real_tinystories_with_gpt2(tmp_path: Path, shared_data: Path) -> None:
    valid_txt, gpt2 = shared_data / "tinystories" / "valid.txt", shared_data / "gpt2"
    if not valid_txt.is_file() or not (gpt2 / "vocab.json").is_file():
        pytest.skip(f"TinyStories valid.txt or GPT-2 files absent under {shared_data}")
    cfg = _cfg(tmp_path, DataConfig(source="text", train=str(valid_txt), valid_fraction=0.05),
               TokenizerConfig(kind="gpt2", path=str(gpt2)))
    prep = prepare_data(cfg, log=lambda _: None)
    splits = prep.meta["splits"]
    assert splits["train"]["documents"] + splits["valid"]["documents"] == 1199
    assert prep.meta["eos_id"] == 50256 and prep.meta["vocab_size"] == 50257 and prep.meta["dtype"] == "uint16"
    valid = np.asarray(open_tokens(prep.valid_path))
    assert int((valid == 50256).sum()) == splits["valid"]["documents"] and valid[-1] == 50256
    first = _segments(valid, 50256)[0][:-1].tolist()
    assert prep.tokenizer.decode(first) == load_documents(cfg.data, "valid")[0]
    assert 0.2 < splits["train"]["tokens_per_byte"] < 0.3
    # The ids are those of the `tokenizers` library document by document, and the files are the bytes
    # the pipeline wrote before it encoded joined chunks on threads (pinned: the inputs are fixed files).
    docs = load_splits(cfg.data)
    for split, path in (("train", prep.train_path), ("valid", prep.valid_path)):
        assert np.asarray(open_tokens(path)).tolist() == _reference_stream(prep.dir / "tokenizer.json", docs[split])
    assert hashlib.sha256(prep.train_path.read_bytes()).hexdigest() == (
        "566e8e0ed0edc828d491d4cf5e43e9072bdefb77b5640d60566da5d192e07184")
    assert hashlib.sha256(prep.valid_path.read_bytes()).hexdigest() == (
        "7fcacdef5c7d85f0f30fe0ded65e219cc08122e36778e9fee0e7320dac87d331")


# ---------------------------------------------------------------- windows and loader

def _ref_splitmix64(seed: int, i: int) -> int:
    m = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)
    return mix((mix(seed) + (i + 1) * 0x9E3779B97F4A7C15) & m)


@pytest.fixture(scope="module")
def positions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token file whose token at offset t is t: a window reveals where it starts."""
    path = tmp_path_factory.mktemp("tok") / "pos.bin"
    write_tokens(path, np.arange(50_000), np.uint32, eos=0)
    return path


def test_windows_are_a_pure_function_of_seed_and_index(positions: Path) -> None:
    idx = np.array([0, 1, 2, 10**12, 2**63 + 5], dtype=np.uint64)
    for seed in (0, 1, 1337, 2**63 - 1):
        assert splitmix64(seed, idx).tolist() == [_ref_splitmix64(seed, int(i)) for i in idx]
    ds = WindowDataset(positions, seq_len=16, micro_batch=4, seed=9)
    starts = window_starts(9, np.arange(12, 16), 50_000, 16)
    assert starts.tolist() == [_ref_splitmix64(9, i) % (50_000 - 17) for i in range(12, 16)]
    x, y = ds[3]  # micro-batch 3 = samples 12..15
    assert x.dtype == torch.int64 and x.shape == (4, 16) and y.shape == (4, 16)
    assert x[:, 0].tolist() == starts.tolist() and torch.equal(y, x + 1)
    fresh = WindowDataset(positions, 16, 4, seed=9)
    assert torch.equal(fresh[3][0], x) and not torch.equal(WindowDataset(positions, 16, 4, seed=10)[3][0], x)
    assert eval_batches(positions, 16, 4, 3, 9)[2][0].tolist() == ds[2][0].tolist()


def test_step_rows_do_not_depend_on_the_layout(positions: Path) -> None:
    global_rows = 8
    expected = None
    for world_size, grad_accum, micro_batch in [(1, 1, 8), (1, 4, 2), (2, 2, 2), (4, 1, 2), (2, 1, 4), (8, 1, 1)]:
        assert world_size * grad_accum * micro_batch == global_rows
        ds = WindowDataset(positions, 8, micro_batch, seed=4)
        steps = []
        for step in range(3):
            starts = []
            for rank in range(world_size):
                it = iter(MicroBatchSampler(rank, world_size, grad_accum, start_step=step))
                for k in itertools.islice(it, grad_accum):
                    starts += ds[k][0][:, 0].tolist()
            steps.append(sorted(starts))
        expected = expected or steps
        assert steps == expected
    assert len(set(expected[0]) | set(expected[1])) > 8  # steps differ


def _take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_exactly(positions: Path, num_workers: int) -> None:
    def build(workers: int = num_workers):
        return build_train_loader(positions, seq_len=8, micro_batch=2, seed=3, rank=1, world_size=2,
                                  grad_accum=3, num_workers=workers)
    straight = _take(build(), 48)
    first = build()
    head = _take(first, 25) + _take(first, 15)  # a new iterator continues where the last one stopped
    state = orjson.loads(orjson.dumps(first.state_dict()))  # survives a JSON round trip
    assert state["step"] == 13 and state["micro"] == 1
    for workers in (num_workers, 2 - num_workers):  # also resumes with a different worker count
        resumed = build(workers)
        resumed.load_state_dict(state)
        tail = _take(resumed, 8)
        for (x, y), (ex, ey) in zip(head + tail, straight, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    # start_step enters the same stream at a step boundary.
    later = build_train_loader(positions, 8, 2, 3, 1, 2, 3, num_workers, start_step=5)
    assert torch.equal(_take(later, 1)[0][0], straight[15][0])


def test_loader_rejects_a_cursor_of_another_layout(positions: Path) -> None:
    src = build_train_loader(positions, 8, 2, 3, rank=0, world_size=2, grad_accum=1, num_workers=0)
    _take(src, 5)
    state = src.state_dict()
    for kwargs in (dict(world_size=1, grad_accum=2), dict(world_size=2, grad_accum=1, seed=4),
                   dict(world_size=2, grad_accum=1, micro_batch=1)):
        args = dict(seq_len=8, micro_batch=2, seed=3, rank=0, num_workers=0) | kwargs
        other = build_train_loader(positions, **args)
        with pytest.raises(DataError, match=r"cursor mismatch.*world_size=2.*start_step=5"):
            other.load_state_dict(state)
    with pytest.raises(DataError, match="unsupported state"):
        src.load_state_dict({**state, "version": 99})


def test_short_token_file_is_rejected(tmp_path: Path) -> None:
    write_tokens(tmp_path / "tiny.bin", np.arange(10), np.uint16, eos=0)
    with pytest.raises(DataError, match=r"tiny\.bin holds 10 tokens"):
        WindowDataset(tmp_path / "tiny.bin", seq_len=16, micro_batch=1, seed=0)
