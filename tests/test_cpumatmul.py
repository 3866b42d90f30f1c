"""fp32 CPU linear maps through oneDNN (`run.cpu_matmul`): the same function and gradients as ATen's, the same
bits eager and compiled, ATen's own kernel wherever the route does not apply, and exact resume under kill -9."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import write_recipe

from slmtrain import config, cpumatmul
from slmtrain.model import GPT

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from chaos import run_experiment  # noqa: E402


@pytest.fixture
def onednn() -> Iterator[None]:
    was = cpumatmul.onednn_enabled()
    cpumatmul.set_onednn(True)
    yield
    cpumatmul.set_onednn(was)


def _grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in leaves]


# The weight gradient transposes the narrower of the input and the output gradient: both ways round.
@pytest.mark.parametrize("outputs", [160, 40])
def test_values_and_gradients_are_atens_up_to_rounding(onednn: None, outputs: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 50, 96, generator=g), torch.randn(outputs, 96, generator=g)
    b = torch.randn(outputs, generator=g)
    assert cpumatmul.takes(x, w)
    y, grads = _grads(cpumatmul.linear, x, w, b)
    y_ref, grads_ref = _grads(F.linear, x, w, b)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case", ["off", "few rows", "bf16", "autocast"])
def test_aten_keeps_what_the_route_does_not_take(onednn: None, case: str) -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(128 if case != "few rows" else 8, 64, generator=g), torch.randn(32, 64, generator=g)
    if case == "off":
        cpumatmul.set_onednn(False)
    if case == "bf16":
        x, w = x.bfloat16(), w.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        assert not cpumatmul.takes(x, w)
        assert torch.equal(cpumatmul.linear(x, w), F.linear(x, w))


def _step_grads(model: GPT, idx: torch.Tensor, forward) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    _, loss = forward(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_products_are_the_eager_ones_bit_for_bit(onednn: None) -> None:
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 64, 48, generator=g), torch.randn(80, 48, generator=g), torch.randn(80, generator=g)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cpumatmul.linear(torch.relu(cpumatmul.linear(x, w, b)), w.t())
    y, grads = _grads(f, x, w, b)
    y_c, grads_c = _grads(torch.compile(f), x, w, b)
    assert torch.equal(y, y_c)
    # The input's and the weight's gradients are oneDNN's products alone; the bias's is a sum inductor orders
    # its own way.
    assert torch.equal(grads[0], grads_c[0]) and torch.equal(grads[1], grads_c[1])
    torch.testing.assert_close(grads[2], grads_c[2], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_a_model_step_through_onednn_matches_the_blas_one(onednn: None, flavour: str) -> None:
    cfg = config.loads("", overrides=[f"model.flavour='{flavour}'", "model.n_layer=2", "model.n_head=2",
                                      "model.n_embd=64", "model.seq_len=64", "model.vocab_size=512"]).model
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (4, 65))
    eager = _step_grads(model, idx, model)
    compiled = _step_grads(model, idx, torch.compile(model))
    cpumatmul.set_onednn(False)
    blas = _step_grads(model, idx, model)
    for name in eager:
        torch.testing.assert_close(eager[name], blas[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)
    # The route was taken: oneDNN's rounding differs from the BLAS's somewhere.
    assert any(not torch.equal(eager[n], blas[n]) for n in eager)


def test_kill_9_then_resume_is_exact_with_onednn_matmuls(tmp_path: Path, cache: Path) -> None:
    recipe = write_recipe(tmp_path, cache)
    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        ok = run_experiment(recipe, tmp_path, kills=3, overrides=["run.cpu_matmul='onednn'", "train.max_steps=40",
                                                                   "checkpoint.every_steps=4"], seed=11, out=out)
    report = log.read_text()
    assert ok, report
    assert "kills: 3 " in report, report
    assert config.load(tmp_path / "chaos" / "recipe.toml").run.cpu_matmul == "onednn"

