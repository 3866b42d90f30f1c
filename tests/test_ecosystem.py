"""Plots, TensorBoard, the Python API, and CLI conventions (status, help, generate without a prompt)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_recipe

import slmtrain
from slmtrain import cli
from slmtrain.plot import _series, figure, plot


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> list[Path]:
    tmp = tmp_path_factory.mktemp("eco")
    recipe = write_recipe(tmp, cache)
    runs = []
    for name, lr in (("a", "5e-3"), ("b", "2e-3")):
        assert cli.main(["run", str(recipe), "--run-dir", str(tmp / name), "--set", "train.max_steps=40",
                         "--set", f"optim.lr={lr}"]) == 0
        runs.append(tmp / name)
    return runs


def test_plot_draws_one_line_per_run_in_every_panel(two_runs: list[Path], tmp_path: Path) -> None:
    for x in ("steps", "tokens", "time"):
        fig = figure(two_runs, x)
        axes = fig.axes
        assert [a.get_title() for a in axes] == ["loss (nats/token)", "validation bits per byte", "learning rate",
                                                 "tokens/s"]
        assert len(axes[0].get_lines()) == 4  # train and validation per run
        assert all(len(a.get_lines()) == 2 for a in axes[1:])
        assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["a", "b"]
        lr_a = axes[2].get_lines()[0].get_ydata()
        assert len(lr_a) == 40 and max(lr_a) == pytest.approx(5e-3)  # one point per logged step
    out = plot(two_runs, tmp_path / "c.png")
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (750, 1100)
    # Not blank: a good share of the pixels are not the white background, and both line colours appear.
    assert (img[..., :3] < 0.9).any(axis=-1).mean() > 0.02
    blue, orange = np.array([0.12, 0.47, 0.71]), np.array([1.0, 0.5, 0.05])
    for colour in (blue, orange):
        assert (np.abs(img[..., :3] - colour).max(axis=-1) < 0.08).sum() > 200


def test_every_run_refreshes_its_curves_after_an_evaluation(two_runs: list[Path]) -> None:
    png = two_runs[0] / "curves.png"
    assert png.stat().st_size > 20_000
    assert not list(two_runs[0].glob(".curves.png.tmp-*"))


def test_plot_cli_and_bad_input(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    assert cli.main(["plot", *map(str, two_runs), "-o", str(tmp_path / "x.png"), "--x", "tokens"]) == 0
    assert (tmp_path / "x.png").stat().st_size > 20_000
    assert cli.main(["plot", str(tmp_path), "-o", str(tmp_path / "y.png")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "y.png").exists()


def test_tensorboard_logs_scalars_or_says_it_is_missing(tmp_path: Path, cache: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, cache)
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp_path / "tb"), "--set", "train.max_steps=20",
                     "--set", "log.tensorboard=true"]) == 0
    err = capsys.readouterr().err
    if importlib.util.find_spec("tensorboard") is None:
        assert "the tensorboard package is not installed: pip install tensorboard" in err
        assert not (tmp_path / "tb" / "tensorboard").exists()
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
        acc.Reload()
        assert len(acc.Scalars("train/loss")) == 20 and acc.Scalars("eval/val_bpb")


def test_the_python_api_drives_a_run_end_to_end(tmp_path: Path, cache: Path) -> None:
    cfg = slmtrain.load_recipe(write_recipe(tmp_path, cache), ["train.max_steps=30", "eval.every_steps=0"])
    assert slmtrain.train(cfg, tmp_path / "run") == 0
    report = slmtrain.verify(tmp_path / "run")
    assert report.sound, report.format()
    text = slmtrain.generate(tmp_path / "run", "Once upon a time", max_new_tokens=20, temperature=0.0)
    model, cfg2, tok = slmtrain.load_model(tmp_path / "run")
    assert text.startswith("Once upon a time") and len(tok.encode(text)) > len(tok.encode("Once upon a time"))
    assert slmtrain.generate(model, "Once upon a time", 20, tokenizer=tok, temperature=0.0) == text
    assert cfg2.train.max_steps == 30
    out = slmtrain.export(tmp_path / "run", tmp_path / "hf")
    assert (out / "config.json").is_file()
    assert slmtrain.train(cfg, tmp_path / "run", resume=True) == 0  # already finished: nothing left to do
    assert slmtrain.resume(tmp_path / "run", ["train.max_steps=35"]) == 0
    assert slmtrain.verify(tmp_path / "run").sound


def test_importing_slmtrain_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, slmtrain, slmtrain.cli; slmtrain.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_generate_without_a_prompt_starts_a_story(two_runs: list[Path]) -> None:
    for args in ([], ["--prompt", ""]):
        proc = run_cli("generate", str(two_runs[0]), "--max-new-tokens", "30", "--seed", "3", *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() and "<|endoftext|>" not in proc.stdout.split("\n")[0][:13]


def test_status_shows_export_readiness_and_new_verbs_have_help(two_runs: list[Path], capsys) -> None:
    assert cli.main(["status", str(two_runs[0])]) == 0
    assert "export: gpt2 flavour -> transformers GPT2LMHeadModel" in capsys.readouterr().out
    for verb in ("export", "plot"):
        with pytest.raises(SystemExit) as e:
            cli.main([verb, "--help"])
        assert e.value.code == 0
        assert "usage: slmtrain " + verb in capsys.readouterr().out


def test_a_rolled_back_stretch_is_drawn_apart_from_the_retrained_one() -> None:
    records = [{"kind": "train", "step": s, "loss": loss} for s, loss in
               [(1, 3.0), (2, 2.0), (3, 9.0), (4, 12.0), (2, 2.1), (3, 1.9)]]  # rolled back from 4 to 1
    xs, ys = _series(records, "train", "loss", "step")
    assert xs[:4] == [1, 2, 3, 4] and xs[5:] == [2, 3] and math.isnan(xs[4]) and math.isnan(ys[4])
    assert _series(records[:4], "train", "loss", "step") == ([1, 2, 3, 4], [3.0, 2.0, 9.0, 12.0])
