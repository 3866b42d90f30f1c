"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from slmtrain.config import ModelConfig, OptimConfig, ScheduleConfig
from slmtrain.model import GPT
from slmtrain.optim import Schedule, build_optimizer, build_scheduler


def _model() -> GPT:
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=64))


def test_decay_applies_to_matrices_only() -> None:
    model = _model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.wte.weight for p in decay["params"])


def _lrs(kind: str, total: int = 100, warmup: int = 10, **kw) -> list[float]:
    sched = Schedule(ScheduleConfig(kind=kind, warmup_steps=warmup, min_lr_ratio=0.1, **kw), total)
    return [sched(s) for s in range(total)]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_then_the_shape_holds(kind: str) -> None:
    lrs = _lrs(kind)
    assert lrs[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    after = lrs[10:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # never rises after warmup
    if kind == "constant":
        assert set(after) == {1.0}
    else:
        assert after[-1] == pytest.approx(0.1)  # the last step runs at the floor
    if kind == "wsd":
        assert lrs[79] == 1.0 and lrs[81] < 1.0  # stable, then decays over the last 20%
    if kind == "cosine":
        mid = 10 + 45
        assert lrs[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    if kind == "linear":
        assert lrs[55] == pytest.approx(1 - 0.9 * 45 / 89)


def test_scheduler_state_round_trips_and_resumes_identically() -> None:
    model = _model()
    opt = build_optimizer(model, OptimConfig(lr=1.0), "cpu")
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=3), 20)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(_model(), OptimConfig(lr=1.0), "cpu")
    sched2 = build_scheduler(opt2, ScheduleConfig(warmup_steps=3), 20)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()


def test_fused_is_only_requested_on_cuda() -> None:
    opt = build_optimizer(_model(), OptimConfig(fused="on"), "cpu")
    assert not opt.defaults.get("fused")
    if torch.cuda.is_available():
        assert build_optimizer(_model().cuda(), OptimConfig(), "cuda").defaults.get("fused")
