"""Export to Hugging Face transformers and back: logits, greedy generations and tokenizer parity, refusals,
safetensors, and `model.init_from`."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import write_recipe

from slmtrain import cli
from slmtrain.ckptload import load_model, resolve_checkpoint
from slmtrain.config import ModelConfig
from slmtrain.export import export, load_init_weights
from slmtrain.generate import generate
from slmtrain.model import GPT

transformers = pytest.importorskip("transformers", reason="transformers is a declared dependency; install it")

VARIANTS = {
    "gpt2": ([], "GPT2LMHeadModel"),
    "gpt2-nobias-untied-relu2-zero": (["model.bias=false", "model.tie_embeddings=false", "model.relu2=true",
                                       "model.zero_init=true", "optim.head_lr=0.01"], "GPT2LMHeadModel"),
    "llama": (["model.flavour='llama'"], "LlamaForCausalLM"),
    "llama-untied-relu2": (["model.flavour='llama'", "model.tie_embeddings=false", "model.relu2=true"],
                           "LlamaForCausalLM"),
    "qwen3": (["model.flavour='llama'", "model.qk_norm=true", "optim.name='muon'"], "Qwen3ForCausalLM"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    recipe = write_recipe(tmp, cache)
    runs = {}
    for name, (sets, _) in VARIANTS.items():
        args = ["run", str(recipe), "--run-dir", str(tmp / name), "--set", "train.max_steps=12",
                "--set", "eval.every_steps=0"]
        for s in sets:
            args += ["--set", s]
        assert cli.main(args) == 0
        runs[name] = tmp / name
    return runs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_loads_the_export_with_the_same_logits_tokens_and_tokenizer(trained: dict[str, Path],
                                                                                 tmp_path: Path, variant: str) -> None:
    out = export(trained[variant], tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                     "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == VARIANTS[variant][1]
    ours, cfg, tok = load_model(resolve_checkpoint(trained[variant], lambda _m: None))
    idx = torch.randint(0, cfg.model.vocab_size, (3, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)
    # The tied matrix is stored once, as transformers saves it.
    stored = safetensors.torch.load_file(out / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not cfg.model.tie_embeddings)
    if cfg.model.tie_embeddings:
        assert hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    prompt = tok.encode("Once upon a time")
    mine = list(generate(ours, prompt, 20, temperature=0.0))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.eos_id)[0, len(prompt):].tolist()
    assert mine == theirs
    text = "Once upon a time, Lily's dog ran to the park. \"Wow!\" she said. 123 <|endoftext|>The end."
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    card = (out / "README.md").read_text()
    assert VARIANTS[variant][1] in card and "tokens seen" in card and "## Recipe" in card


def test_an_option_without_a_standard_layout_is_refused_and_nothing_is_written(trained: dict[str, Path],
                                                                               tmp_path: Path, cache: Path,
                                                                               capsys) -> None:
    recipe = write_recipe(tmp_path, cache)
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp_path / "capped"), "--set", "train.max_steps=2",
                     "--set", "model.logit_softcap=10.0", "--set", "eval.every_steps=0"]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "capped"), str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model.logit_softcap = 10.0" in err and "--format safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    # The bare format takes any model.
    assert cli.main(["export", str(tmp_path / "capped"), str(tmp_path / "out"), "--format", "safetensors"]) == 0
    sd = safetensors.torch.load_file(tmp_path / "out" / "model.safetensors")
    model, _, _ = load_model(resolve_checkpoint(tmp_path / "capped", lambda _m: None))
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "out" / "config.json").is_file()
    # An existing, non-empty output directory is never overwritten.
    assert cli.main(["export", str(tmp_path / "capped"), str(tmp_path / "out"), "--format", "safetensors"]) == 2


@pytest.mark.parametrize("variant", ["gpt2-nobias-untied-relu2-zero", "qwen3"])
def test_init_from_an_export_gives_the_same_loss_on_the_same_batch(trained: dict[str, Path], tmp_path: Path,
                                                                   variant: str) -> None:
    out = export(trained[variant], tmp_path / "hf")
    source, cfg, tok = load_model(resolve_checkpoint(trained[variant], lambda _m: None))
    fresh = GPT(cfg.model)
    load_init_weights(f"hf:{out}", fresh, tok.eos_id)
    batch = torch.randint(0, cfg.model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert fresh.eval()(batch[:, :-1], batch[:, 1:])[1].item() == pytest.approx(
            source(batch[:, :-1], batch[:, 1:])[1].item(), abs=1e-6)
    # And straight from the checkpoint: the same tensors.
    again = GPT(cfg.model)
    load_init_weights(str(trained[variant]), again, tok.eos_id)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), source.state_dict().values()))


def test_a_run_started_from_an_export_trains_resumes_and_verifies(trained: dict[str, Path], tmp_path: Path,
                                                                  cache: Path, capsys) -> None:
    out = export(trained["qwen3"], tmp_path / "hf")
    recipe = write_recipe(tmp_path, cache)
    sets = ["model.flavour='llama'", "model.qk_norm=true", f"model.init_from='hf:{out}'", "train.max_steps=6",
            "eval.every_steps=0"]
    args = ["run", str(recipe), "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    assert cli.main(args) == 0
    assert f"initial weights from hf:{out}" in capsys.readouterr().err
    assert cli.main(["verify", str(tmp_path / "run")]) == 0
    # A mismatched architecture is refused before anything trains.
    bad = ["run", str(recipe), "--run-dir", str(tmp_path / "bad"), "--set", f"model.init_from='hf:{out}'",
           "--set", "model.flavour='llama'", "--set", "model.n_embd=32"]
    capsys.readouterr()
    assert cli.main(bad) == 2
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped into a paragraph
    assert "is another architecture than this recipe's model: model_type 'qwen3'" in err
    assert "Traceback" not in err


def test_init_from_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, seq_len=8, vocab_size=64))
    from slmtrain.errors import UserError

    with pytest.raises(UserError, match="holds no config.json"):
        load_init_weights(f"hf:{tmp_path / 'nothing'}", model, 0)
