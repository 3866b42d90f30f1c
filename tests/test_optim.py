"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import copy
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


def test_fused_is_requested_as_configured() -> None:
    assert build_optimizer(_model(), OptimConfig(fused="on"), "cpu").defaults.get("fused")
    assert not build_optimizer(_model(), OptimConfig(fused="off"), "cpu").defaults.get("fused")
    if torch.cuda.is_available():
        assert build_optimizer(_model().cuda(), OptimConfig(), "cuda").defaults.get("fused")


def _llama(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(flavour="llama", n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=64, **kw))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = _llama(tie_embeddings=False, qk_norm=True)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=3e-3, head_lr=1e-3, muon_lr=0.03), "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    by_role = {g["role"]: (g, [names[id(p)] for p in g["params"]]) for g in opt.param_groups}
    assert set(by_role) == {"matrices", "scalar", "head", "hidden"}
    hidden_group, hidden = by_role["hidden"]
    assert hidden_group["use_muon"] and hidden_group["lr"] == 0.03
    assert sorted(hidden) == sorted(n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("h."))
    assert by_role["matrices"][1] == ["wte.weight"] and by_role["head"][1] == ["lm_head.weight"]
    assert by_role["head"][0]["lr"] == 1e-3 and not by_role["head"][0]["use_muon"]
    assert all(n.endswith("norm.weight") or n.startswith(("ln_", "h.")) for n in by_role["scalar"][1])
    assert by_role["scalar"][0]["weight_decay"] == 0.0
    assert opt.param_groups[0]["lr"] == 3e-3  # the logged LR is optim.lr's
    listed = [p for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len(set(map(id, listed))) == len(list(model.parameters()))


def _steps(model: GPT, opt: torch.optim.Optimizer, sched, n: int, seed: int = 0) -> list[float]:
    """n updates on one fixed batch (so there is something to learn) drawn from `seed`."""
    batch = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(seed))
    losses = []
    for _ in range(n):
        loss = model(batch[:, :-1], batch[:, 1:])[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.item())
    return losses


def test_muon_momentum_warms_up_with_the_step() -> None:
    cfg = OptimConfig(name="muon", muon_momentum_start=0.8, muon_momentum=0.9, muon_momentum_warmup=4)
    model = _llama()
    opt = build_optimizer(model, cfg, "cpu")
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=2), 20, cfg)
    muon = next(g for g in opt.param_groups if g["use_muon"])
    seen = [muon["momentum"]]
    for _ in range(6):
        _steps(model, opt, sched, 1)
        seen.append(muon["momentum"])
    assert seen == pytest.approx([0.8, 0.825, 0.85, 0.875, 0.9, 0.9, 0.9])


def test_muon_learns_and_its_state_resumes_exactly_through_dcp() -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    cfg = OptimConfig(name="muon", lr=3e-3)
    model = _llama()
    opt = build_optimizer(model, cfg, "cpu")
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=3), 40, cfg)
    first = _steps(model, opt, sched, 10)
    assert first[-1] < first[0] - 0.5
    msd, osd = get_state_dict(model, opt)
    assert all(set(s) == {"momentum_buffer"} for n, s in osd["state"].items() if n.startswith("h.") and "norm" not in n
               and n.endswith("weight") and model.get_parameter(n).dim() == 2)
    assert set(osd["state"]["wte.weight"]) == {"exp_avg", "exp_avg_sq", "step"}
    saved = (copy.deepcopy(msd), copy.deepcopy(osd), copy.deepcopy(sched.state_dict()))
    after = _steps(model, opt, sched, 5, seed=1)
    model2 = _llama()
    opt2 = build_optimizer(model2, cfg, "cpu")
    sched2 = build_scheduler(opt2, ScheduleConfig(warmup_steps=3), 40, cfg)
    set_state_dict(model2, opt2, model_state_dict=saved[0], optim_state_dict=saved[1])
    sched2.load_state_dict(saved[2])
    assert _steps(model2, opt2, sched2, 5, seed=1) == after
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_a_fitted_length_keeps_the_warmup_and_ends_at_the_floor(kind: str) -> None:
    from slmtrain.optim import set_total_steps

    cfg = ScheduleConfig(kind=kind, warmup_steps=10, min_lr_ratio=0.1)
    fixed = Schedule(cfg, 57)
    fitted = Schedule(cfg, 2**62)  # a budgeted run's schedule before its count is fixed
    assert [fitted(s) for s in range(10)] == [fixed(s) for s in range(10)]
    opt = build_optimizer(_model(), OptimConfig(lr=1.0), "cpu")
    sched = build_scheduler(opt, cfg, 2**62)
    set_total_steps(sched, 57)
    assert [sched.lr_lambdas[0](s) for s in range(57)] == [fixed(s) for s in range(57)]
    assert fixed(56) == pytest.approx(0.1)


def test_fit_steps_fills_the_budget_with_evaluations_and_saves() -> None:
    from slmtrain.budget import fit_steps

    # 100 s left after 10 steps in 5 s; 0.1 s a step, an eval (1 s) every 50 steps, a save (2 s) every 100.
    n = fit_steps(105.0, 5.0, 10, 0.1, eval_s=1.0, eval_every=50, save_s=2.0, save_every=100)
    # The final eval and save take 3 s; each further step costs 0.1 + 1/50 + 2/100 = 0.14 s.
    assert n == 10 + math.floor(97 / 0.14)
    assert fit_steps(105.0, 5.0, 10, 0.1, eval_s=1.0, eval_every=0, save_s=2.0, save_every=0) == 10 + 970
    # A save every 30 s: three more saves fit in the 100 s left.
    assert fit_steps(105.0, 5.0, 10, 0.1, eval_s=1.0, eval_every=0, save_s=2.0, save_every=0,
                     save_every_s=30.0) == 10 + 910
    assert fit_steps(4.0, 5.0, 10, 0.1, eval_s=1.0, eval_every=0, save_s=2.0, save_every=0) == 10  # spent already
