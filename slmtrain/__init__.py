"""slmtrain: pretrain small GPT-style language models, survive preemption, prove checkpoints sound.

The Python API (the CLI is a thin layer over it); every function imports what it needs when called, so
`import slmtrain` is instant:

    from slmtrain import load_recipe, train, resume, verify, load_model, generate, export
    cfg = load_recipe("recipes/quickstart.toml", ["train.max_steps=200"])
    code = train(cfg, run_dir="runs/short")          # 0 done, 75 preempted, ...
    report = verify("runs/short")                    # report.sound, report.format()
    text = generate("runs/short", "Once upon a time", max_new_tokens=100, temperature=0.8, seed=1)
    export("runs/short", "hf/short")                 # transformers' from_pretrained loads it
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmtrain.config import Config
    from slmtrain.data.tokenizer import Tokenizer
    from slmtrain.model import GPT
    from slmtrain.verify import Report

from slmtrain.version import __version__

__all__ = ["load_recipe", "train", "resume", "verify", "load_model", "generate", "export", "__version__"]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a TOML recipe, with `section.key=value` overrides as `--set` takes them.

    Raises:
        slmtrain.errors.ConfigError: every problem of the recipe, in one message.
    """
    from slmtrain import config

    return config.load(path, overrides)


def train(recipe: Config | str | Path, run_dir: str | Path | None = None, *, resume: bool = False) -> int:
    """Train from a recipe (a `Config` or a path) into `run_dir` (default run.out_dir/run.name).

    With `resume=True` an existing run in `run_dir` is continued (the recipe must agree with it).
    Returns the exit code `slmtrain run` would: 0 finished, 75 preempted after a durable save, 130 aborted.

    Raises:
        slmtrain.errors.UserError: bad input (exit code 2 on the CLI); other errors as they happen.
    """
    from slmtrain import config
    from slmtrain.run import RunManager, resolve_run_dir

    cfg = recipe if isinstance(recipe, config.Config) else config.load(recipe)
    target = resolve_run_dir(cfg, str(run_dir) if run_dir is not None else None)
    return RunManager(cfg, target, resume=resume and (target / "run.json").exists()).execute()


def resume(run_dir: str | Path, overrides: list[str] | None = None) -> int:
    """Continue a run from its newest sound checkpoint, reading RUN_DIR/recipe.toml; returns the exit code."""
    from slmtrain import config
    from slmtrain.errors import UserError
    from slmtrain.run import RunManager

    run_dir = Path(run_dir)
    recipe = run_dir / "recipe.toml"
    if not recipe.exists():
        raise UserError(f"{run_dir} is not a run directory (no recipe.toml): pass the directory a `slmtrain run` "
                        f"created, e.g. runs/quickstart")
    return RunManager(config.load(recipe, overrides), run_dir, resume=True).execute()


def verify(path: str | Path, strict: bool = False) -> Report:
    """Check a checkpoint (or a run directory's latest) from its own files; `.sound` is the verdict."""
    from slmtrain.verify import resolve_targets
    from slmtrain.verify import verify as _verify

    (target,) = resolve_targets(path, False, log=lambda _m: None)
    return _verify(target, strict=strict)


def load_model(path: str | Path, device: str = "cpu") -> tuple[GPT, Config, Tokenizer]:
    """(model in eval mode, recipe, tokenizer) of a checkpoint or a run directory's newest sound one."""
    from slmtrain.ckptload import load_model as _load, resolve_checkpoint

    return _load(resolve_checkpoint(path, lambda _m: None), device)


def generate(model: Any, prompt: str = "", max_new_tokens: int = 200, *, tokenizer: Tokenizer | None = None,
             temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> str:
    """Text continuing `prompt` (empty: a story from the start-of-text token), prompt included.

    Args:
        model: a checkpoint or run directory, or a `GPT` (then `tokenizer` is required).
        temperature: 0 for greedy; top_k / top_p filter the sampled distribution.
        seed: seeds sampling (None: random).
    """
    import torch

    from slmtrain.generate import generate as _generate

    if isinstance(model, (str, Path)):
        model, _, tokenizer = load_model(model)
    if tokenizer is None:
        raise ValueError("generate(model=GPT, ...) needs tokenizer=")
    ids = tokenizer.encode(prompt)
    gen = torch.Generator(device=model.wte.weight.device)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    new = list(_generate(model, ids or [tokenizer.eos_id], max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_id=tokenizer.eos_id, generator=gen))
    return tokenizer.decode(ids + new)


def export(path: str | Path, out_dir: str | Path, fmt: str = "hf") -> Path:
    """Write a checkpoint as a Hugging Face model directory (fmt "hf") or bare safetensors; returns out_dir."""
    from slmtrain.export import export as _export

    return _export(path, out_dir, fmt)


class _Package(types.ModuleType):
    """The package module. Importing a submodule sets it as an attribute of the package; for the submodules
    that share a name with a function above (train, verify, generate, export) the function stays."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
