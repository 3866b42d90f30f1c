"""fp32 linear maps on CPU through oneDNN rather than the BLAS, where the BLAS leaves the hardware idle.

PyTorch's CPU build hands fp32 matmuls to MKL and bf16 ones to oneDNN. MKL runs its AVX-512 kernels on Intel
CPUs only; on AMD's AVX-512 CPUs it takes its AVX2 path. On a Zen 5 EPYC (2 cores) MKL's fp32 products at the
training shapes ran at 170-185 GFLOP/s and oneDNN's at 380-410, the forward, the input gradient and the weight
gradient alike (tools/bench.py, ceilings). On a Zen 4, whose AVX-512 is double-pumped, the gap is smaller
but oneDNN still wins a whole fp32 step (1.1-1.4x). `run.cpu_matmul` chooses; "auto" takes oneDNN on x86 CPUs
with AVX-512 that are not Intel's, a fixed rule so that one machine always computes the same numbers.

The products go through one custom op with its own backward, so eager and compiled steps run the same kernels
(inductor calls the op as it is) and the weight gradient is oneDNN's too. Only fp32 inputs with enough rows
outside autocast take it: under autocast ATen's linear already runs in oneDNN's bf16, and a decode step's
single row is a matrix-vector product, which the BLAS does as fast.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

# Products with fewer rows stay with the BLAS: a decode step, a single sample's prefill.
_MIN_ROWS = 64
_enabled = False


def onednn_wins(setting: str) -> bool:
    """Whether `run.cpu_matmul` = `setting` ("auto", "blas", "onednn") routes fp32 CPU products through oneDNN."""
    if setting != "auto":
        return setting == "onednn"
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: leave the BLAS in charge
        return False
    return "GenuineIntel" not in info and " avx512f" in info  # AVX-512 is x86's alone


def set_onednn(on: bool) -> None:
    """Route this process's fp32 CPU linear maps through oneDNN (True) or ATen's BLAS (False)."""
    global _enabled
    _enabled = bool(on) and torch.backends.mkldnn.is_available()


def onednn_enabled() -> bool:
    return _enabled


def onednn_linear(x: Tensor, weight: Tensor) -> Tensor:
    """`x @ weight.T` by oneDNN, for 2-D CPU tensors, without autograd (tools/bench.py times it)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


@torch.library.custom_op("slmtrain::onednn_linear", mutates_args=())
def _linear(x: Tensor, weight: Tensor) -> Tensor:
    """`x @ weight.T` for a 2-D fp32 `x` (N, K) and `weight` (M, K), by oneDNN."""
    return onednn_linear(x, weight)


@_linear.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


def _setup(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:  # type: ignore[no-untyped-def]
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    x, weight = ctx.saved_tensors
    # The weight gradient sums over the rows, which both x (N, K) and grad (N, M) hold as their outer dimension:
    # oneDNN takes the product's second operand through its strides but copies a transposed first one into
    # a dense buffer, with ATen's transposing copy (4.6 ms for 4096 x 512 on a Zen 4 core pair; inductor's
    # tiled one takes 1.3, and 0.12 at 4096 x 128). So the narrower of the two goes first, transposed here,
    # where a compiled backward fuses the copy into its own kernel: 4096 x 128 x 512 took 9.1 ms with
    # oneDNN's copy of x, 3.6 + 0.1 this way.
    if x.shape[1] <= grad.shape[1]:
        grad_w = _linear(x.t().contiguous(), grad.t()).t()
    else:
        grad_w = _linear(grad.t().contiguous(), x.t())
    return _linear(grad, weight.t()), grad_w


_linear.register_autograd(_backward, setup_context=_setup)


def takes(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear(x, weight)` goes through oneDNN: `set_onednn(True)` and a big enough fp32 CPU batch
    outside autocast."""
    return (_enabled and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() >= _MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu"))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, by oneDNN where `takes` says so; the bias is then added apart (its
    gradient is the plain sum)."""
    if not takes(x, weight):
        return F.linear(x, weight, bias)
    y = _linear(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias
