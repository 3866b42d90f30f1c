"""The [model] options (QK-norm, ReLU squared, zero init, untied head, logit soft-cap) in both flavours."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_model import build, tiny, tokens

from slmtrain.model import GPT

OPTIONS = {
    "qk_norm": {"qk_norm": True},
    "relu2": {"relu2": True},
    "zero_init": {"zero_init": True, "tie_embeddings": False},
    "softcap": {"logit_softcap": 3.0},
    "all": {"qk_norm": True, "relu2": True, "zero_init": True, "tie_embeddings": False, "logit_softcap": 15.0},
}
CASES = [(f, name) for f in ("gpt2", "llama") for name in OPTIONS]


def _trained(flavour: str, **kw: object) -> GPT:
    """A model a few steps away from its init, so zero-initialised weights are no longer zero."""
    model = build(tiny(flavour, **kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tokens(4, 17)
    for _ in range(3):
        opt.zero_grad()
        model(batch[:, :-1], batch[:, 1:])[1].backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("flavour,option", CASES)
def test_every_option_works_with_the_kv_cache(flavour: str, option: str) -> None:
    model = _trained(flavour, **OPTIONS[option])
    idx = tokens(2, 16)
    full = model(idx)[0]
    cache = model.new_cache(2)
    parts = [model(idx[:, lo:hi], cache=cache)[0] for lo, hi in ((0, 7), (7, 8), (8, 16))]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    # The fixed-shape decode step generation uses: prefill, then one position at a time.
    cache = model.new_cache(2)
    with torch.no_grad():
        model(idx[:, :4], cache=cache)
        steps = [model.decode_step(idx[:, p:p + 1], torch.tensor(p), cache) for p in range(4, 16)]
    assert torch.allclose(torch.stack(steps, dim=1), full[:, 4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flavour,option", CASES)
def test_options_change_the_function_and_keep_causality(flavour: str, option: str) -> None:
    base, opt = build(tiny(flavour)).eval(), build(tiny(flavour, **OPTIONS[option])).eval()
    idx = tokens(2, 16)
    if option not in ("zero_init",):  # zero init is about the start point, tested below
        assert not torch.allclose(base(idx)[0], opt(idx)[0], atol=1e-4)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64
    a, b = opt(idx)[0], opt(changed)[0]
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6, rtol=0)


def test_qk_norm_normalises_queries_and_keys_per_head() -> None:
    model = build(tiny("llama", qk_norm=True))
    attn = model.h[0].attn
    assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
    assert "h.0.attn.q_norm.weight" in model.state_dict()
    assert build(tiny("llama")).h[0].attn.q_norm is None


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_relu2_is_relu_squared_in_the_mlp(flavour: str) -> None:
    mlp = build(tiny(flavour, relu2=True)).h[0].mlp
    x = torch.randn(2, 3, 32)
    h = mlp.c_fc(x)
    if flavour == "llama":
        gate, up = h.chunk(2, dim=-1)
        want = mlp.c_proj(F.relu(gate) ** 2 * up)
    else:
        want = mlp.c_proj(F.relu(h) ** 2)
    assert torch.allclose(mlp(x), want, atol=1e-6)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_zero_init_starts_every_block_as_the_identity_and_the_head_uniform(flavour: str) -> None:
    model = build(tiny(flavour, zero_init=True, tie_embeddings=False))
    sd = model.state_dict()
    zeroed = [k for k in sd if k.endswith("c_proj.weight")] + ["lm_head.weight"]
    assert len(zeroed) == 2 * 2 + 1 and all(not sd[k].any() for k in zeroed)
    assert sd["h.0.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    logits, loss = model(tokens(2, 16), tokens(2, 16, seed=3))
    assert not logits.any() and loss.item() == pytest.approx(math.log(64), abs=1e-6)
    # The other weights are drawn exactly as without the option (the RNG stream is the same).
    plain = build(tiny(flavour, tie_embeddings=False)).state_dict()
    assert torch.equal(plain["h.1.mlp.c_fc.weight"], sd["h.1.mlp.c_fc.weight"])


def test_softcap_bounds_the_logits() -> None:
    capped, plain = build(tiny("gpt2", logit_softcap=2.0, init_std=1.0)), build(tiny("gpt2", init_std=1.0))
    idx = tokens(2, 16)
    logits, raw = capped(idx)[0], plain(idx)[0]
    assert raw.abs().max().item() > 10  # the same weights without the cap
    assert logits.abs().max().item() <= 2.0
    assert torch.allclose(logits, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_defaults_leave_the_model_as_it_was(flavour: str) -> None:
    # Options default off: the same seed gives the same weights and the same logits as a config without them.
    a = build(tiny(flavour))
    b = build(tiny(flavour, qk_norm=False, relu2=False, zero_init=False, logit_softcap=0.0))
    idx = tokens(2, 16)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert torch.equal(a(idx)[0], b(idx)[0])

