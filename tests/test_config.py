"""Recipe parsing: every shipped recipe parses, bad recipes fail with every problem named, never a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmtrain import config
from slmtrain.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"quickstart.toml", "tinystories.toml", "tinystories-gpu.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_round_trips(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.run.name
    assert config.loads(config.to_toml(cfg)) == cfg


def test_defaults_are_valid() -> None:
    cfg = config.loads("")
    assert cfg == config.Config().replace("run", name="run")


def test_unknown_keys_suggest_the_nearest() -> None:
    with pytest.raises(ConfigError) as e:
        config.loads("[model]\nn_hed = 4\n[trian]\nx = 1\n")
    msg = str(e.value)
    assert "did you mean 'n_head'" in msg
    assert "'trian'" in msg and "did you mean 'train'" in msg
    assert "2 problems" in msg


def test_all_problems_are_collected() -> None:
    text = '[model]\nn_embd = 130\nn_head = 4\n[train]\nmax_steps = "ten"\n[optim]\nlr = -1.0\n'
    with pytest.raises(ConfigError) as e:
        config.loads(text, origin="bad.toml")
    msg = str(e.value)
    assert "bad.toml" in msg
    assert "model.n_embd (130) must be divisible by model.n_head (4)" in msg
    assert "train.max_steps: expected an integer" in msg
    assert "optim.lr: -1.0 is below the minimum" in msg


@pytest.mark.parametrize("text,needle", [
    ("[run]\ndevice = 'tpu'\n", "run.device: 'tpu' is not one of"),
    ("[run]\nseed = true\n", "run.seed: expected an integer"),
    ("[train]\nmax_steps = 0\nmax_tokens = 0\n", "train.max_steps, train.max_tokens and train.max_minutes are all 0"),
    ("[data]\nsource = 'text'\n", "data.train is empty"),
    ("[data]\nsource = 'csv'\n", "data.source: 'csv'"),
    ("[model]\nflavour = 'llama'\nn_embd = 12\nn_head = 4\n", "must be even for RoPE"),
    ("[model]\nflavour = 'llama'\nn_embd = 12\nn_head = 4\n", "must be even for RoPE"),
    ("[optim]\nlr = nan\n", "optim.lr: must be a finite number"),
    ("run = 3\n", "[run] must be a table"),
    ("[eval]\nprompts = [1, 2]\n", "eval.prompts: expected a list of strings"),
    ("[model\n", "not valid TOML"),
])
def test_bad_values_are_named(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text)
    assert needle in str(e.value)


def test_overrides_apply_and_validate() -> None:
    cfg = config.loads("", overrides=["train.max_steps=7", "eval.prompts=['a', 'b']", "run.name=x y",
                                      "optim.lr=3e-4", "run.compile=true"])
    assert cfg.train.max_steps == 7 and cfg.eval.prompts == ["a", "b"] and cfg.run.name == "x y"
    assert cfg.optim.lr == 3e-4 and cfg.run.compile is True
    with pytest.raises(ConfigError, match="expected section.key=value"):
        config.loads("", overrides=["max_steps=3"])
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        config.loads("", overrides=["train.max_step=3"])


def test_diff_names_changed_keys() -> None:
    a = config.loads("")
    b = config.loads("", overrides=["model.n_layer=2", "train.max_steps=5"])
    assert config.diff(a, b) == ["model.n_layer", "train.max_steps"]
    assert "train.max_steps" in config.RESUME_SAFE_KEYS and "model.n_layer" not in config.RESUME_SAFE_KEYS


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_bytes(b"[run]\nname = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        config.load(tmp_path / "bad.toml")


def test_reference_documents_every_key() -> None:
    rows = config.reference()
    assert len(rows) == sum(len(config.dataclasses.fields(c)) for c in config.SECTIONS.values())
    assert all(doc for _, _, _, doc in rows)


_keys = st.sampled_from([r[0] for r in config.reference()] + ["model.nope", "nope.key", "train", ".x"])
_values = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True), st.booleans(),
                    st.text(string.printable, max_size=12), st.lists(st.text(max_size=4), max_size=3))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_recipe_text_never_crashes(text: str) -> None:
    try:
        cfg = config.loads(text)
    except ConfigError as e:
        assert str(e)
    else:
        assert isinstance(cfg, config.Config)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_keys, _values), max_size=5))
def test_arbitrary_overrides_never_crash(pairs: list) -> None:
    overrides = [f"{k}={config._toml_value(v) if not isinstance(v, float) else repr(v)}" for k, v in pairs]
    try:
        cfg = config.loads("", overrides=overrides)
    except ConfigError as e:
        assert str(e)
    else:
        assert config.loads(config.to_toml(cfg)) == cfg


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_raw_override_strings_never_crash(text: str) -> None:
    try:
        config.loads("", overrides=[text])
    except ConfigError as e:
        assert str(e)
