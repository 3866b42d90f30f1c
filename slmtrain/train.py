"""One optimizer step (accumulation, autocast, clipping, finite check) and evaluation.

No I/O and no host syncs here: the caller decides when to call `.item()` (log steps only). The finite
check is a device flag; fused AdamW applies or skips the update on it inside its kernel (its `found_inf`,
as a grad scaler uses it), so the step never waits for the device. Other optimizers read the flag at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepStats:
    loss: torch.Tensor  # mean loss over the step's micro-batches (fp32, on device)
    grad_norm: torch.Tensor  # global norm before clipping
    skipped: bool | torch.Tensor  # non-finite loss or gradients, the update not applied (a device flag, or a bool)
    tokens: int  # tokens this process consumed
    lr: float  # learning rate this update used


def autocast_context(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def pick_precision(name: str, device: torch.device) -> str:
    """`run.precision` made concrete: "auto" is bf16 where this hardware runs it faster than fp32, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        # bf16 matmuls against fp32 (tools/bench.py, ceilings): AMX tiles ~5x, AVX512-BF16's dot products
        # (Zen 4) 2.3x; a compiled step 1.6x on either. Without them bf16 is emulated, slower than fp32.
        native = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return "bf16" if any(getattr(torch.cpu, name, lambda: False)() for name in native) else "fp32"
    return "fp32"


def cpu_compiler_found() -> bool:
    """Whether torch.compile can build CPU kernels here: inductor compiles them with a C++ compiler ($CXX,
    else g++, or clang++ on macOS), which a fresh laptop may lack."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let torch.compile speak for itself
        return True
    try:
        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or the search failing in another way: no usable compiler
        return False
    return True


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here (no C++ compiler for CPU kernels), or None when it can."""
    if device.type == "cpu" and not cpu_compiler_found():
        return "inductor needs a C++ compiler for CPU kernels and none was found (set $CXX or install g++ / clang++)"
    return None


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Fused AdamW takes the skip decision as a device tensor (`found_inf`), so it needs no host sync."""
    return type(optimizer) is torch.optim.AdamW and bool(optimizer.defaults.get("fused"))


def train_step(model: torch.nn.Module, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, *, grad_accum: int, grad_clip: float,
               device: torch.device, precision: str, scaler: torch.amp.GradScaler | None = None,
               fused_head_loss: bool = False) -> StepStats:
    """Run `grad_accum` micro-batches and one optimizer update.

    A preempted step still completes, so a saved state always sits on an optimizer-step boundary:
    that is what makes resume exact.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    tokens = 0
    sync_ctx = getattr(model, "no_sync", None)
    for micro in range(grad_accum):
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        tokens += y.numel()
        last = micro == grad_accum - 1
        # DDP all-reduces gradients on every backward; only the last micro-batch needs it.
        ctx = sync_ctx() if (sync_ctx is not None and not last) else contextlib.nullcontext()
        with ctx:
            with autocast_context(device.type, precision):
                _, loss = model(x, y, loss_only=True, chunked=fused_head_loss)
            loss = loss / grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2: the flag below must be a plain tensor
        grad_norm = grad_norm.full_tensor()
    nonfinite = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
    if scaler is not None:
        # The scaler skips steps with inf/nan gradients and lowers its scale: its normal calibration, not
        # divergence. Only a non-finite loss counts as a skipped step.
        scaler.step(optimizer)
        scaler.update()
        skipped = not bool(torch.isfinite(total))
    elif skips_on_device(optimizer):
        optimizer.found_inf, optimizer.grad_scale = nonfinite.float(), None
        optimizer.step()
        skipped = nonfinite
    elif not bool(nonfinite):  # a host sync: skipping a poisoned update is worth more than the overlap it costs
        optimizer.step()
        skipped = False
    else:
        skipped = True
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return StepStats(loss=total, grad_norm=grad_norm.detach(), skipped=skipped, tokens=tokens, lr=lr)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], device: torch.device, precision: str,
             should_stop: Callable[[], bool] | None = None) -> float | None:
    """Mean validation loss in nats per token; None when interrupted by `should_stop`."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    try:
        for x, y in batches:
            if should_stop is not None and should_stop():
                return None
            with autocast_context(device.type, precision):
                _, loss = model(x.to(device), y.to(device))
            total += loss.double()
    finally:
        model.train(was_training)
    return float(total.item()) / max(1, len(batches))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """Tokenizer-independent: nats per token * tokens per byte / ln 2."""
    return loss * tokens_per_byte / math.log(2)
