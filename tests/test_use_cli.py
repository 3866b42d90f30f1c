"""`slmtrain generate` and `slmtrain eval` on a real tiny run, and the shared checkpoint loading."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import orjson
import pytest
import torch
from helpers import run_cli, write_recipe

from slmtrain import cli
from slmtrain.ckptload import load_model, resolve_checkpoint
from slmtrain.data.tokenizer import EOS_TOKEN, Tokenizer
from slmtrain.errors import CheckpointError, UserError
from slmtrain.use_cli import _stream_text

STORIES = ["Tom had a red ball. He liked to play with it in the park every day.",
           "The little dog ran to the tree. It was happy and wagged its tail.",
           "Lily saw a big bird in the sky. She waved at the bird and smiled."]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("use-run")
    recipe = write_recipe(tmp, tmp / "cache")
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "run"), "--set", "train.max_steps=10",
                     "--set", "checkpoint.every_steps=5", "--set", "eval.every_steps=0"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def final(run: Path) -> Path:
    return run / "checkpoints" / "step_00000010"


@pytest.fixture()
def stories(tmp_path: Path) -> Path:
    f = tmp_path / "stories.txt"
    f.write_text(f"\n{EOS_TOKEN}\n".join(STORIES * 4))
    return f


def _meta(ckpt: Path) -> dict:
    return orjson.loads((ckpt / "meta.json").read_bytes())


# --------------------------------------------------------------------------------------------- loading
def test_load_model_from_checkpoint_alone(final: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(final, tmp_path / "elsewhere" / final.name))
    model, cfg, tok = load_model(copy)
    assert not model.training and model.wte.weight.dtype == torch.float32
    assert model.output_weight is model.wte.weight
    assert tok.fingerprint == _meta(copy)["tokenizer_fingerprint"]
    assert model.num_params() == _meta(copy)["params"]
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is not sound: tokenizer.json: size 2"):
        load_model(copy)


def test_run_dir_resolves_to_newest_sound_checkpoint(run: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(run, print) == run / "checkpoints" / "step_00000010"
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    (copy / "checkpoints" / "step_00000010" / "config.json").write_text("{}")
    told: list[str] = []
    assert resolve_checkpoint(copy, told.append) == copy / "checkpoints" / "step_00000005"
    assert any("skipping step_00000010" in t for t in told)
    with pytest.raises(UserError, match="neither a checkpoint nor a run directory"):
        resolve_checkpoint(tmp_path, print)


# -------------------------------------------------------------------------------------------- generate
def _generate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_greedy_generation_equals_the_recorded_reference(run: Path, final: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tok = Tokenizer.from_file(final / "tokenizer.json")
    for ref in _meta(final)["reference"]["generations"]:
        tokens = ref["tokens"]
        if tok.eos_id in tokens:  # generate stops at EOS; the reference records straight through it
            tokens = tokens[: tokens.index(tok.eos_id)]
        args = (str(run), "--prompt", ref["prompt"], "--temperature", "0", "--max-new-tokens", str(len(ref["tokens"])))
        code, out, err = _generate(capsys, *args)
        assert code == 0, err
        assert out == tok.decode(ref["prompt_ids"] + tokens) + "\n"
        assert "step_00000010" in err  # diagnostics on stderr, the text alone on stdout
        assert _generate(capsys, *args)[1] == out


def test_int8_weights_generate_the_prompt_and_a_continuation(run: Path, final: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    tok = Tokenizer.from_file(final / "tokenizer.json")
    args = (str(run), "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "12")
    code, exact, err = _generate(capsys, *args)
    assert code == 0, err
    code, out, err = _generate(capsys, *args, "--weights", "int8")
    assert code == 0, err
    assert out.startswith("Once upon a time") and len(tok.encode(out)) > len(tok.encode("Once upon a time"))
    assert _generate(capsys, *args, "--weights", "int8")[1] == out  # greedy int8 is deterministic too
    assert exact.startswith("Once upon a time")


def test_compiled_greedy_generates_the_eager_text(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = (str(run), "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "20")
    code, eager, err = _generate(capsys, *args)
    assert code == 0, err
    code, compiled, err = _generate(capsys, *args, "--compile")
    assert code == 0, err
    assert compiled == eager and len(compiled) > len("Once upon a time\n")
    assert "decoding eager" not in err


def test_compile_without_a_cpu_compiler_decodes_eager_and_says_so(run: Path, capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    args = (str(run), "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "8")
    eager = _generate(capsys, *args)[1]
    # A fresh process: inductor remembers the compiler it found. It takes $CXX as the one to use.
    proc = run_cli("generate", *args, "--compile", env={**os.environ, "CXX": str(tmp_path / "no-such-c++")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == eager and "none was found" in proc.stderr and "decoding eager" in proc.stderr


def test_seeded_sampling_repeats_and_samples_are_separated(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = (str(run), "--prompt", "The little dog", "--temperature", "1.0", "--top-k", "50", "--top-p", "0.95",
            "--max-new-tokens", "30", "--num-samples", "2")
    code, first, _ = _generate(capsys, *args, "--seed", "3")
    assert code == 0
    assert _generate(capsys, *args, "--seed", "3")[1] == first
    assert _generate(capsys, *args, "--seed", "4")[1] != first
    samples = first.rstrip("\n").split("\n\n")
    assert len(samples) == 2 and all(s.startswith("The little dog") for s in samples), first


@pytest.mark.parametrize("option, value, needle", [("--temperature", "-1", "temperature"),
                                                   ("--top-p", "1.5", "top_p"),
                                                   ("--num-samples", "0", "--num-samples")])
def test_bad_sampling_options_exit_2(run: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
                                     needle: str) -> None:
    code, out, err = _generate(capsys, str(run), "--prompt", "Hi", option, value)
    assert code == 2 and needle in err and out == ""
    assert err.startswith("error: ") and "Traceback" not in err


def test_bad_temperature_through_the_cli_process(run: Path) -> None:
    proc = run_cli("generate", str(run), "--prompt", "Once upon a time", "--temperature", "nan", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "temperature must be a finite number" in proc.stderr and "Traceback" not in proc.stderr


def test_stream_prints_whole_characters_only(final: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = Tokenizer.from_file(final / "tokenizer.json")
    ids = tok.encode("Hi \u00e9t\u00e9 \U0001f600 fin")  # multi-byte characters split over byte tokens
    _stream_text(tok.decode, ids[:1], iter(ids[1:]))
    out = capsys.readouterr().out
    assert out == tok.decode(ids) and "\ufffd" not in out


# ------------------------------------------------------------------------------------------------ eval
def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli.main(["eval", *args, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_eval_on_the_run_validation_split(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _eval(capsys, str(run), "--batches", "3")
    assert doc["step"] == 10 and Path(doc["checkpoint"]).name == "step_00000010"
    assert math.isfinite(doc["loss"]) and 0 < doc["loss"] < math.log(512) + 1
    assert doc["perplexity"] == pytest.approx(math.exp(doc["loss"]), rel=1e-12)
    assert doc["bits_per_byte"] == pytest.approx(doc["loss"] * doc["tokens_per_byte"] / math.log(2), rel=1e-12)
    seq_len = 64
    assert doc["windows"] == 3 * 16 and doc["tokens"] == doc["windows"] * seq_len  # eval batch = train batch 16
    assert cli.main(["eval", str(run), "--batches", "1"]) == 0
    line = capsys.readouterr().out
    assert "step 10" in line and "loss" in line and "ppl" in line and "bpb" in line


def test_eval_on_a_text_file_matches_a_direct_computation(final: Path, stories: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    doc = _eval(capsys, str(final), "--data", str(stories), "--batches", "1", "--batch-size", "2")
    model, cfg, tok = load_model(final)
    ids = [t for s in STORIES * 4 for t in (*tok.encode(s), tok.eos_id)]
    t = cfg.model.seq_len
    batch = torch.tensor([ids[i * t: i * t + t + 1] for i in range(2)])
    with torch.no_grad():
        _, loss = model(batch[:, :-1], batch[:, 1:])
    assert doc["loss"] == pytest.approx(float(loss), rel=1e-6)
    n_bytes = sum(len(s.encode()) + 1 for s in STORIES * 4)
    assert doc["tokens_per_byte"] == pytest.approx(len(ids) / n_bytes)
    assert (doc["windows"], doc["tokens"]) == (2, 2 * t)


def test_eval_on_tinystories_valid(final: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    valid = shared_data / "tinystories" / "valid.txt"
    if not valid.is_file():
        pytest.skip(f"{valid} is absent")
    doc = _eval(capsys, str(final), "--data", str(valid), "--batches", "2", "--batch-size", "4")
    assert math.isfinite(doc["loss"]) and doc["windows"] == 8
    assert 0.5 < doc["bits_per_byte"] < 8


@pytest.mark.parametrize("data, needle", [("missing.txt", "does not exist"), ("notes.csv", "no .txt/.jsonl")])
def test_eval_bad_data_exits_2(final: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str,
                               needle: str) -> None:
    (tmp_path / "notes.csv").write_text("a,b\n")
    assert cli.main(["eval", str(final), "--data", str(tmp_path / data)]) == 2
    assert needle in " ".join(capsys.readouterr().err.split())


def test_eval_and_generate_refuse_a_damaged_checkpoint(final: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(final, tmp_path / final.name))
    (copy / "model" / "__0_0.distcp").write_bytes(b"garbage")
    assert cli.main(["eval", str(copy)]) == 1
    assert "is not sound" in capsys.readouterr().err
    assert cli.main(["generate", str(copy), "--prompt", "Hi"]) == 1
    assert "slmtrain verify" in capsys.readouterr().err
