"""Optimizers (AdamW, or Muon for hidden matrices plus AdamW) and LR schedules as resumable LambdaLR objects."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from slmtrain.config import OptimConfig, ScheduleConfig


def param_roles(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter's role by name: embed (token/position tables), head (untied output), hidden (2-D
    matrices inside the blocks) or scalar (norm gains, biases)."""
    roles = {}
    for name, p in model.named_parameters():
        if name.startswith(("wte.", "wpe.")):
            roles[name] = "embed"
        elif name.startswith("lm_head."):
            roles[name] = "head"
        else:
            roles[name] = "hidden" if p.dim() == 2 else "scalar"
    return roles


def muon_parameters(model: torch.nn.Module, cfg: OptimConfig) -> set[str]:
    """Names of the parameters Muon updates (none with AdamW): the hidden matrices."""
    if cfg.name != "muon":
        return set()
    return {n for n, role in param_roles(model).items() if role == "hidden"}


def _groups(model: torch.nn.Module, cfg: OptimConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Muon groups, AdamW groups), empty ones left out. The first AdamW group runs at optim.lr: its LR is logged.

    Norm gains and biases are not decayed: pulling them to zero fights the normalisation they implement.
    """
    roles = param_roles(model)
    params = [(roles[n], p) for n, p in model.named_parameters() if p.requires_grad]
    own_lr = {"embed": cfg.embed_lr, "head": cfg.head_lr}
    muon_roles = {"hidden"} if cfg.name == "muon" else set()
    # Matrices at optim.lr share one decayed group, in model order (the order the grad norm is summed in).
    shared = {"hidden", "embed", "head"} - muon_roles - {r for r, lr in own_lr.items() if lr}
    adam = [{"params": [p for r, p in params if r in shared], "weight_decay": cfg.weight_decay, "role": "matrices"},
            {"params": [p for r, p in params if r == "scalar"], "weight_decay": 0.0, "role": "scalar"}]
    adam += [{"params": [p for r, p in params if r == role], "lr": lr, "weight_decay": cfg.weight_decay, "role": role}
             for role, lr in own_lr.items() if lr]
    muon = [{"params": [p for r, p in params if r in muon_roles], "lr": cfg.muon_lr,
             "weight_decay": cfg.muon_weight_decay, "ns_steps": cfg.muon_ns_steps, "role": "hidden",
             "momentum": cfg.muon_momentum_start if cfg.muon_momentum_warmup else cfg.muon_momentum}]
    return [g for g in muon if g["params"]], [g for g in adam if g["params"]]


_FUSED_AUTO = ("cuda", "cpu")  # CPU: 1.07x the foreach step, measured by tools/bench.py


class MuonAdamW(torch.optim.Optimizer):
    """torch's Muon on some parameter groups and AdamW on the others, as one optimizer.

    The loop, the grad scaler, the LR scheduler and DCP see one object whose `param_groups` and `state` are
    the very dicts the two inner optimizers step; a load replaces them, so the inner ones are re-linked.
    """

    def __init__(self, muon_groups: list[dict[str, Any]], adam_groups: list[dict[str, Any]],
                 adam_kwargs: dict[str, Any]) -> None:
        self._muon = torch.optim.Muon(muon_groups)
        self._adam = torch.optim.AdamW(adam_groups, **adam_kwargs)
        for g in self._muon.param_groups:
            g["use_muon"] = True
        for g in self._adam.param_groups:
            g["use_muon"] = False
        # AdamW's groups first: group 0 runs at optim.lr (see _groups).
        super().__init__(self._adam.param_groups + self._muon.param_groups, {})
        self._link()

    def _link(self) -> None:
        self._muon.param_groups = [g for g in self.param_groups if g["use_muon"]]
        self._adam.param_groups = [g for g in self.param_groups if not g["use_muon"]]
        self._muon.state = self._adam.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self._muon.step()
        self._adam.step()


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW (decay on matrices only), or Muon for the hidden matrices with AdamW for the rest."""
    muon, adam = _groups(model, cfg)
    # torch has fused AdamW kernels for CUDA and CPU; "auto" picks them where they are measured faster.
    fused_ok = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
    fused = fused_ok and (device_type in _FUSED_AUTO if cfg.fused == "auto" else cfg.fused == "on")
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if fused:
        kwargs["fused"] = True
    if muon:
        return MuonAdamW(muon, adam, kwargs)
    return torch.optim.AdamW(adam, **kwargs)


class Schedule:
    """lr multiplier as a pure function of the step; plain attributes so LambdaLR can checkpoint it."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int) -> None:
        self.kind = cfg.kind
        self.warmup = cfg.warmup_steps
        self.floor = cfg.min_lr_ratio
        self.decay_fraction = cfg.decay_fraction
        self.total = max(1, total_steps)
        # Steps [.._from, .._until) run at `..` x the schedule: a rollback's cooling off, an injected fault.
        self.scale, self.scale_until = 1.0, 0
        self.fault, self.fault_from, self.fault_until = 1.0, 0, 0

    def __call__(self, step: int) -> float:
        factor = self.scale if step < self.scale_until else 1.0
        if self.fault_from <= step < self.fault_until:
            factor *= self.fault
        return factor * self._base(step)

    def _base(self, step: int) -> float:
        # (step + 1) so the very first update already moves the weights.
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            decay_start = max(self.warmup, int(self.total * (1.0 - self.decay_fraction)))
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, self.total - 1 - decay_start))
            return 1.0 - (1.0 - self.floor) * progress
        # The last step (total - 1) runs exactly at the floor.
        progress = min(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        if self.kind == "linear":
            return 1.0 - (1.0 - self.floor) * progress
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Scheduler(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that also warms up Muon's momentum as a function of the step, so it resumes with last_epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, momentum: tuple[float, float, int]) -> None:
        self.momentum_start, self.momentum_end, self.momentum_warmup = momentum  # plain values: JSON in meta
        super().__init__(optimizer, schedule)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        progress = min(1.0, self.last_epoch / self.momentum_warmup) if self.momentum_warmup else 1.0
        for g in self.optimizer.param_groups:
            if g.get("use_muon"):
                g["momentum"] = self.momentum_start + (self.momentum_end - self.momentum_start) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                    optim_cfg: OptimConfig | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    o = optim_cfg or OptimConfig()
    return _Scheduler(optimizer, Schedule(cfg, total_steps),
                      (o.muon_momentum_start, o.muon_momentum, o.muon_momentum_warmup))


def set_total_steps(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Give the schedule its length (a budgeted run fixes it after its first steps; resume may raise it)."""
    for fn in scheduler.lr_lambdas:
        fn.total = max(1, total_steps)
