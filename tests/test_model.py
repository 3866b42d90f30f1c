"""Contracts of slmtrain.model: tying, parameter count, causality, KV cache, init, loss, overfitting."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import pytest
import torch

from slmtrain.config import ModelConfig
from slmtrain.model import GPT, apply_rope, gelu_tanh, rope_angles, swiglu_hidden

FLAVOURS = ("gpt2", "llama")


def tiny(flavour: str = "gpt2", **kw: object) -> ModelConfig:
    base: dict[str, object] = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, seq_len=16, vocab_size=64)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def tokens(*shape: int, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tied_output_weight_is_the_token_embedding(flavour: str) -> None:
    model = build(tiny(flavour))
    assert model.output_weight is model.wte.weight
    assert "lm_head.weight" not in model.state_dict()
    assert not hasattr(model, "lm_head")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tying_survives_a_state_dict_round_trip(flavour: str) -> None:
    src = build(tiny(flavour), seed=0)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = build(tiny(flavour), seed=1)
    dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert dst.output_weight is dst.wte.weight
    assert dst.output_weight.data_ptr() == dst.wte.weight.data_ptr()
    idx = tokens(2, 8)
    assert torch.equal(src(idx)[0], dst(idx)[0])
    # Updating the embedding updates the output projection: they are one tensor.
    with torch.no_grad():
        dst.wte.weight[3].add_(1.0)
    assert torch.equal(dst.output_weight[3], dst.wte.weight[3])


def test_a_separate_lm_head_fails_a_strict_load_into_a_tied_model() -> None:
    sd = build(tiny()).state_dict()
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        build(tiny()).load_state_dict(sd, strict=True)


def test_untied_model_has_its_own_output_matrix() -> None:
    model = build(tiny(tie_embeddings=False))
    assert model.output_weight is model.lm_head.weight
    assert model.output_weight is not model.wte.weight
    assert model.output_weight.data_ptr() != model.wte.weight.data_ptr()
    assert "lm_head.weight" in model.state_dict()
    assert model.num_params() - build(tiny()).num_params() == 64 * 32


def _expected_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) written out layer by layer."""
    d, V, S, L = cfg.n_embd, cfg.vocab_size, cfg.seq_len, cfg.n_layer
    if cfg.flavour == "gpt2":
        b = 1 if cfg.bias else 0
        ln = d + b * d
        h = int(cfg.mlp_ratio * d)
        block = 2 * ln + (3 * d * d + b * 3 * d) + (d * d + b * d) + (d * h + b * h) + (h * d + b * d)
        emb = V * d + S * d
        final = ln
    else:
        h = swiglu_hidden(cfg)
        block = 2 * d + 3 * d * d + d * d + d * 2 * h + h * d
        emb = V * d
        final = d
    head = 0 if cfg.tie_embeddings else V * d
    total = emb + L * block + final + head
    return total, total - emb


@pytest.mark.parametrize("cfg", [tiny("gpt2"), tiny("gpt2", bias=False), tiny("gpt2", tie_embeddings=False),
                                 tiny("llama"), tiny("llama", tie_embeddings=False, mlp_ratio=2.5)],
                         ids=["gpt2", "gpt2-nobias", "gpt2-untied", "llama", "llama-untied"])
def test_param_count_matches_the_formula(cfg: ModelConfig) -> None:
    model = GPT(cfg)
    total, non_emb = _expected_params(cfg)
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == non_emb
    # Cross-check against the state dict, which also holds a tied matrix once.
    assert sum(t.numel() for t in model.state_dict().values()) == total


def test_param_count_literal_for_the_tiny_gpt2() -> None:
    # wte 64*32 + wpe 16*32 + 2 blocks * (12*32^2 + 13*32) + ln_f 2*32
    assert GPT(tiny()).num_params() == 2048 + 512 + 2 * (12288 + 416) + 64 == 28032
    assert "28.03K params (25.47K non-embedding)" == GPT(tiny()).param_summary()


def test_swiglu_width_is_a_multiple_of_32_near_two_thirds() -> None:
    assert swiglu_hidden(tiny("llama")) == 96  # 2/3 * 128 = 85.3
    assert swiglu_hidden(tiny("llama", n_embd=768)) == 2048  # 2/3 * 3072
    model = GPT(tiny("llama"))
    assert model.h[0].mlp.c_fc.weight.shape == (2 * 96, 32)
    assert model.h[0].mlp.c_proj.bias is None and model.h[0].attn.c_attn.bias is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_future_token_does_not_change_earlier_logits(flavour: str) -> None:
    model = build(tiny(flavour)).eval()
    idx = tokens(2, 16)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 64
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_incremental_forward_with_a_cache_matches_the_full_forward(flavour: str) -> None:
    model = build(tiny(flavour)).eval()
    idx = tokens(3, 16)
    full = model(idx)[0]
    cache = model.new_cache(3)
    parts = []
    for lo, hi in ((0, 5), (5, 6), (6, 11), (11, 16)):  # prefill, one token, several tokens (masked)
        parts.append(model(idx[:, lo:hi], cache=cache)[0])
        assert cache.length == hi
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_rope_scores_depend_only_on_relative_position() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=gen), torch.randn(1, 1, 1, 16, generator=gen)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, *rope_angles(16, 10000.0, m, 1, q.device))
        kn = apply_rope(k, *rope_angles(16, 10000.0, n, 1, k.device))
        assert torch.allclose(qm.norm(), q.norm())  # a rotation keeps lengths
        return float((qm * kn).sum())

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), abs=0.1)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-6)


def test_cache_accepts_autocast_dtypes() -> None:
    model = build(tiny("llama")).eval()
    idx = tokens(1, 12)
    cache = model.new_cache(1)  # fp32 buffers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx[:, :8], cache=cache)
        logits = model(idx[:, 8:], cache=cache)[0]
    assert torch.allclose(logits.float(), model(idx)[0][:, 8:], atol=0.1)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_context_beyond_seq_len_raises(flavour: str) -> None:
    model = build(tiny(flavour))
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(1, 17))
    cache = model.new_cache(1)
    model(tokens(1, 14), cache=cache)
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(1, 3), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(tokens(2, 1), cache=cache)


def test_unresolved_vocab_size_raises() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(tiny(vocab_size=0))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_init_is_deterministic_under_a_seed(flavour: str) -> None:
    a, b, c = build(tiny(flavour), 7).state_dict(), build(tiny(flavour), 7).state_dict(), build(tiny(flavour), 8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["h.0.attn.c_attn.weight"], c.state_dict()["h.0.attn.c_attn.weight"])


def test_init_scales_residual_projections_and_zeroes_biases() -> None:
    cfg = tiny(n_embd=64, n_layer=8)
    model = build(cfg)
    sd = model.state_dict()
    assert sd["wte.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["h.0.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["h.3.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert sd["h.3.attn.c_proj.weight"].std().item() == pytest.approx(0.02 / 4, rel=0.08)
    assert all(not sd[k].any() for k in sd if k.endswith("bias"))
    assert torch.equal(sd["ln_f.weight"], torch.ones(64))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_loss_at_init_is_close_to_uniform(flavour: str) -> None:
    model = build(tiny(flavour, vocab_size=128))
    idx = tokens(4, 16, vocab=128)
    targets = tokens(4, 16, vocab=128, seed=2)
    targets[0, :4] = -1  # ignored positions
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16, 128)
    assert loss is not None and loss.dtype == torch.float32
    assert abs(loss.item() - math.log(128)) < 0.3
    assert model(idx)[1] is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_tiny_model_overfits_one_batch(flavour: str) -> None:
    model = build(tiny(flavour))
    batch = tokens(4, 17)
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = model(x, y)[1].item()
    for _ in range(50):
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_the_compiled_gelu_is_gpt2s_tanh_gelu() -> None:
    # Compiled, the activation is written as x * sigmoid(2u): the same function as the tanh form, value and slope.
    x = torch.linspace(-12, 12, 24001).requires_grad_()
    want = torch.nn.functional.gelu(x, approximate="tanh")
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    got = torch.compile(gelu_tanh, fullgraph=True)(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(gelu_tanh(x), want)  # eager is ATen's own kernel, bit for bit


def test_dropout_is_active_in_training_only() -> None:
    model = build(tiny(dropout=0.5))
    idx = tokens(2, 8)
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_model_imports_only_torch_config_the_head_loss_and_the_matmul_route() -> None:
    source = Path(__file__).resolve().parents[1] / "slmtrain" / "model.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    ours = {m for m in imported if m.startswith("slmtrain")}
    # headloss imports only cpumatmul, which imports nothing of ours (test_structure)
    assert ours == {"slmtrain.config", "slmtrain.headloss", "slmtrain.cpumatmul"}
    assert not any(m.startswith("torch.distributed") for m in imported)
