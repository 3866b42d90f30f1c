"""The fused head + cross-entropy: the value and gradients of the plain path, and a run that uses it trains alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli, train_losses, write_recipe

from slmtrain.config import ModelConfig
from slmtrain.headloss import chunk_rows, cross_entropy, head_logits, head_loss
from slmtrain.model import GPT


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("n", [1, 100, 2 * chunk_rows(3000) + 7])  # one chunk, several and a ragged last one
def test_value_and_gradients_equal_the_plain_cross_entropy(softcap: float, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 48, generator=g, dtype=torch.float64).requires_grad_()
    w = (0.2 * torch.randn(3000, 48, generator=g, dtype=torch.float64)).requires_grad_()
    t = torch.randint(0, 3000, (n,), generator=g)
    t[::5] = -1 if n > 1 else t[::5]  # positions left out of the loss
    z = h @ w.t()
    plain = F.cross_entropy(softcap * torch.tanh(z / softcap) if softcap else z, t, ignore_index=-1)
    fused = head_loss(h, w, t, softcap)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(torch.autograd.grad(plain * 3, (h, w)), torch.autograd.grad(fused * 3, (h, w))):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_the_model_gives_the_same_loss_and_gradients_with_and_without_logits() -> None:
    cfg = ModelConfig(flavour="llama", n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=300, qk_norm=True,
                      logit_softcap=20.0, tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    logits, plain = model(x, y)
    grads = torch.autograd.grad(plain, list(model.parameters()))
    none, fused = model(x, y, loss_only=True, chunked=True)
    assert logits is not None and none is None
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, torch.autograd.grad(fused, list(model.parameters()))):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_run_with_the_fused_head_loss_trains_like_the_plain_one(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "cache")
    runs = {}
    for name, fused in (("plain", "false"), ("fused", "true")):
        runs[name] = tmp_path / name
        out = run_cli("run", str(recipe), "--run-dir", str(runs[name]), "--set", "train.max_steps=12",
                      "--set", "log.every_steps=1", "--set", f"train.fused_head_loss={fused}")
        assert out.returncode == 0, out.stderr
    plain, fused = train_losses(runs["plain"]), train_losses(runs["fused"])
    assert plain.keys() == fused.keys() and len(plain) == 12
    # Rounding differs, so after a dozen updates the losses agree closely, not bit for bit.
    assert all(abs(plain[s] - fused[s]) < 1e-3 for s in plain), (plain, fused)


def test_loss_only_without_chunks_is_the_plain_path_bit_for_bit() -> None:
    """What a training step calls (a compiled graph that returned the logits would be handed their zero gradient)."""
    cfg = ModelConfig(flavour="gpt2", bias=False, n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(cfg)
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    y[0, :5] = -1
    logits, plain = model(x, y)
    grads = torch.autograd.grad(plain, list(model.parameters()))
    none, loss = model(x, y, loss_only=True)
    assert logits is not None and none is None
    assert torch.equal(loss, plain)
    for a, b in zip(grads, torch.autograd.grad(loss, list(model.parameters()))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("left_out", [0, 5, 64])  # none, some, and every position left out of the loss
def test_the_compiled_cross_entropy_is_torchs(left_out: int) -> None:
    g = torch.Generator().manual_seed(left_out)
    logits = (4 * torch.randn(64, 500, generator=g)).requires_grad_()
    t = torch.randint(0, 500, (64,), generator=g)
    t[:left_out] = -1
    want = F.cross_entropy(logits, t, ignore_index=-1)
    (want_grad,) = torch.autograd.grad(want * 3, logits)
    got = torch.compile(cross_entropy, fullgraph=True)(logits, t)
    (got_grad,) = torch.autograd.grad(got * 3, logits)
    # A mean over no positions is nan in both, with a zero gradient.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(cross_entropy(logits, t), want, rtol=0, atol=0, equal_nan=True)  # eager: ATen's


def test_the_compiled_head_product_has_the_plain_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 48, 32, generator=g, requires_grad=True)
    w = torch.randn(300, 32, generator=g, requires_grad=True)
    up = torch.randn(2, 48, 300, generator=g)  # an upstream gradient that is not all ones
    want = F.linear(x, w)
    want_grads = torch.autograd.grad(want, (x, w), up)
    got = torch.compile(head_logits, fullgraph=True)(x, w)
    got_grads = torch.autograd.grad(got, (x, w), up)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert torch.equal(head_logits(x, w), want)  # eager: ATen's
