"""A whole training run through the CLI: it learns, it is deterministic, its checkpoint reloads."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import events, run_cli, train_losses, val_losses, write_recipe

from slmtrain import cli, config
from slmtrain.checkpoint import load_app_state
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.fsio import read_json
from slmtrain.generate import generate
from slmtrain.log import read_jsonl
from slmtrain.model import GPT


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp, cache)
    code = cli.main(["run", str(recipe), "--run-dir", str(tmp / "run")])
    assert code == 0
    return tmp / "run"


def test_run_learns(trained: Path) -> None:
    losses = train_losses(trained)
    assert len(losses) >= 20
    steps = sorted(losses)
    first = sum(losses[s] for s in steps[:5]) / 5
    last = sum(losses[s] for s in steps[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    vals = val_losses(trained)
    assert len(vals) >= 2 and vals[max(vals)] < vals[min(vals)]


def test_run_directory_layout(trained: Path) -> None:
    for name in ("recipe.toml", "run.json", "tokenizer.json", "metrics.jsonl", "samples.jsonl"):
        assert (trained / name).is_file(), name
    assert read_json(trained / "run.json")["status"] == "finished"
    cfg = config.load(trained / "recipe.toml")
    assert cfg.model.vocab_size == 512  # resolved from the tokenizer, rounded to a multiple of 64
    for r in read_jsonl(trained / "metrics.jsonl"):
        if r["kind"] == "train":
            assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "time"} <= r.keys()
        if r["kind"] == "eval":
            assert {"step", "tokens", "val_loss", "val_ppl", "val_bpb"} <= r.keys()
            assert r["val_ppl"] == pytest.approx(torch.tensor(r["val_loss"]).exp().item(), rel=1e-6)
            assert 0 < r["val_bpb"] < 10
    samples = read_jsonl(trained / "samples.jsonl")
    assert samples and {"step", "prompt", "text"} <= samples[0].keys()
    assert events(trained, "summary")


def test_lr_follows_warmup_then_decay(trained: Path) -> None:
    lrs = {r["step"]: r["lr"] for r in read_jsonl(trained / "metrics.jsonl") if r["kind"] == "train"}
    assert lrs[1] < lrs[3] < lrs[5]  # warmup
    assert lrs[6] > lrs[40] > lrs[80]  # cosine decay
    assert lrs[80] == pytest.approx(5e-3 * 0.1)  # the last step runs at the floor


def test_sample_story_reads_like_text(trained: Path) -> None:
    story = events(trained, "summary")[0]["sample"]
    words = story.split()
    letters = sum(c.isalpha() for c in story)
    assert len(words) >= 10, story
    assert letters / max(1, len(story)) >= 0.6, story


def test_checkpoint_reloads_from_config_alone(trained: Path) -> None:
    ckpt = trained / "checkpoints" / (trained / "checkpoints" / "latest").read_text().strip()
    saved = read_json(ckpt / "config.json")
    mcfg = config.from_dict(saved["recipe"]).model
    fresh = GPT(mcfg)
    state = {"model": fresh.state_dict()}
    load_app_state(ckpt, state)
    fresh.load_state_dict(state["model"], strict=True)
    assert fresh.output_weight is fresh.wte.weight
    assert "lm_head.weight" not in state["model"]
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    ids = tok.encode("Once upon a time")
    ref = read_json(ckpt / "meta.json")["reference"]["generations"][0]
    got = list(generate(fresh, ids, len(ref["tokens"]), eos_id=None))
    assert got == ref["tokens"]


def test_same_seed_same_losses(trained: Path, cache: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, cache)
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp_path / "again")]) == 0
    assert train_losses(tmp_path / "again") == train_losses(trained)
    assert val_losses(tmp_path / "again") == val_losses(trained)


def test_existing_run_dir_is_refused(trained: Path, cache: Path, tmp_path: Path, capsys) -> None:
    before = (trained / "metrics.jsonl").read_bytes()
    recipe = write_recipe(tmp_path, cache)
    assert cli.main(["run", str(recipe), "--run-dir", str(trained)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained / "metrics.jsonl").read_bytes() == before


def _bad(tmp_path: Path, cache: Path, extra: str = "", overrides: tuple[str, ...] = ()) -> tuple[int, str]:
    recipe = write_recipe(tmp_path, cache, extra)
    args = ["run", str(recipe), "--run-dir", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    proc = run_cli(*args, timeout=120)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("kind", ["unknown_key", "wrong_type", "n_embd", "missing_file", "empty", "utf8"])
def test_bad_recipes_exit_2_with_one_paragraph(kind: str, tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "corpus.txt"
    overrides: tuple[str, ...] = ()
    if kind == "unknown_key":
        overrides, needle = ("model.n_layers=3",), "did you mean 'n_layer'"
    elif kind == "wrong_type":
        overrides, needle = ("train.batch_size=\"big\"",), "train.batch_size: expected an integer"
    elif kind == "n_embd":
        overrides, needle = ("model.n_embd=66", "model.n_head=4"), "divisible by model.n_head"
    else:
        if kind == "empty":
            data.write_text("\n<|endoftext|>\n   \n<|endoftext|>\n")
        elif kind == "utf8":
            data.write_bytes(b"Once upon a time.\n<|endoftext|>\nA cat \xff\xfe sat.\n")
        overrides = ("data.source='text'", f"data.train='{data.as_posix()}'")
        needle = {"missing_file": "corpus.txt", "empty": "corpus.txt", "utf8": "UTF-8"}[kind]
    code, err = _bad(tmp_path, cache, overrides=overrides)
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    paragraph = err.strip().split("\n\n")
    assert len(paragraph) == 1 and err.startswith("error: "), err


def test_help_is_useful() -> None:
    for sub in ([], ["run"], ["resume"], ["prepare"], ["status"]):
        proc = run_cli(*sub, "--help", timeout=60)
        assert proc.returncode == 0
        assert "usage: slmtrain" in proc.stdout
    assert re.search(r"\brun\b.*\bresume\b.*\bverify\b", run_cli("--help").stdout, re.S)


def test_prepare_command(tmp_path: Path) -> None:
    recipe = str(write_recipe(tmp_path, tmp_path / "fresh-cache"))
    proc = run_cli("prepare", recipe, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("built ") and "tokens" in proc.stdout
    assert "tokens/s" in proc.stderr
    again = run_cli("prepare", recipe, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("reused ")


def test_copying_a_checkpoint_keeps_it_usable(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / (trained / "checkpoints" / "latest").read_text().strip()
    shutil.copytree(ckpt, tmp_path / "copy")
    saved = read_json(tmp_path / "copy" / "config.json")
    assert config.from_dict(saved["recipe"]).model.vocab_size == 512


def test_tinystories_recipe_on_real_data(shared_data: Path, tmp_path: Path) -> None:
    """The shipped recipe on real TinyStories text, cut to a few steps: with its trained BPE, and with GPT-2's.

    Eager: compiling two models would be most of this test's time, and compiled training has tests of its own."""
    import os

    env = {**os.environ, "SLMTRAIN_DATA": str(shared_data)}
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tinystories.toml"
    common = ["--set", "train.max_steps=6", "--set", "train.max_minutes=0", "--set", "data.max_documents=300",
              "--set", "eval.every_steps=3", "--set", "eval.batches=2", "--set", "log.every_steps=1",
              "--set", f"data.cache_dir='{(tmp_path / 'cache').as_posix()}'", "--set", "train.batch_size=4",
              "--set", "run.compile=false"]
    gpt2 = ["--set", "tokenizer.kind='gpt2'", "--set", f"tokenizer.path='{(shared_data / 'gpt2').as_posix()}'"]
    for name, extra in (("bpe", []), ("gpt2", gpt2)):
        proc = run_cli("run", str(recipe), "--run-dir", str(tmp_path / name), *common, *extra, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert train_losses(tmp_path / name)[6] < train_losses(tmp_path / name)[1]
    cfg = config.load(tmp_path / "gpt2" / "recipe.toml")
    assert cfg.model.vocab_size == 50304  # GPT-2's 50,257 tokens rounded up to a multiple of 64
    assert Tokenizer.from_file(tmp_path / "gpt2" / "tokenizer.json").encode("Hello world") == [15496, 995]
    bpe = config.load(tmp_path / "bpe" / "recipe.toml")
    assert bpe.tokenizer.kind == "bpe" and bpe.model.vocab_size <= 4096 and bpe.model.qk_norm
    assert Tokenizer.from_file(tmp_path / "bpe" / "tokenizer.json").vocab_size <= 4096
