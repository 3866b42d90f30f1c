"""The output head and the cross-entropy: in one pass over chunks of positions, gradients included, or over
logits (`cross_entropy`, with a backward that inductor compiles into one pass), and the head's own product
(`head_logits`, whose weight gradient a compiled graph computes the faster way round).

The plain path materialises logits of (tokens x vocab) floats, then their gradient of the same size, and
reads both several times: at a 4096-token batch and GPT-2's 50k vocabulary that is 0.8 GB each. Here each
chunk's logits are computed, turned into the loss and into the gradients of the hidden states and of the
head weight at once, and dropped; backward only scales the stored gradients. Same FLOPs, a fraction of the
memory (on a 2-core CPU, the same speed as the plain path). Used for training steps (the loss with
gradients), where the logits themselves are never needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import slmtrain.cpumatmul as cpumatmul


def chunk_rows(vocab: int) -> int:
    """Positions per chunk: about 32 MB of fp32 logits, and never fewer than 1024 rows (measured on CPU:
    128-row chunks run 5x slower than the plain path, 1024-row ones as fast)."""
    return max(1024, min(8192, (2**23 // max(1, vocab)) // 256 * 256))


def _nll_sum(logits: Tensor, picked: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy of the `valid` rows of `logits` (N, V) against `picked` (N, 1), and every row's
    log-sum-exp."""
    lse = torch.logsumexp(logits, dim=-1)
    return ((lse - logits.gather(1, picked).squeeze(1)) * valid).sum(), lse


def _softmax_minus_one_hot(logits: Tensor, lse: Tensor, picked: Tensor, scale: Tensor) -> Tensor:
    """(softmax(logits) - one-hot(picked)) * scale (N, 1): the cross-entropy's gradient over the logits. The
    one-hot is scattered last, so that compiled, the pass over the logits writes the gradient once."""
    g = (logits - lse.unsqueeze(1)).exp_().mul_(scale)
    return g.scatter_add_(1, picked, -scale)


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor,  # type: ignore[override]
                softcap: float, rows: int) -> Tensor:
        valid = targets != -1
        count = valid.sum().clamp(min=1).to(torch.float32)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], rows):
            hc, tc, vc = h[start:start + rows], targets[start:start + rows], valid[start:start + rows]
            z = (hc @ weight.t()).float()
            if softcap:
                s = torch.tanh(z / softcap)
                logits = s * softcap
            else:
                logits = z
            picked = tc.clamp(min=0).unsqueeze(1)
            nll, lse = _nll_sum(logits, picked, vc)
            total += nll
            # d(mean loss)/d(logits) = (softmax - one-hot) / count, zero on ignored positions.
            g = _softmax_minus_one_hot(logits, lse, picked, (vc.to(logits.dtype) / count).unsqueeze(1))
            if softcap:
                g.mul_(1 - s * s)
            grad_h[start:start + rows] = g @ weight.to(g.dtype)
            grad_w.add_(g.t() @ hc.to(g.dtype))
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), None, None, None


def head_loss(h: Tensor, weight: Tensor, targets: Tensor, softcap: float = 0.0) -> Tensor:
    """Mean next-token cross-entropy (fp32) of `h` (N, C) through the head `weight` (V, C) against `targets` (N,),
    -1 marking positions left out; the value and gradients of `F.cross_entropy(h @ weight.T)` up to rounding."""
    return _HeadLoss.apply(h, weight, targets, float(softcap), chunk_rows(weight.shape[0]))


class _CrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(..., ignore_index=-1)` written out for inductor. Autograd's own backward there is a
    log-softmax backward fed by the NLL's gradient, which inductor turns into a pass over all (N x V) logits
    to sum a one-hot per row (known: -1 per valid row) before the pass that writes the gradient. Here the
    forward keeps the log-sum-exp, and the backward is one pass over the logits plus a scatter of N values."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        valid = targets != -1
        count = valid.sum().to(logits.dtype)  # 0 when every position is left out: a nan loss, as torch's
        picked = targets.clamp(min=0).unsqueeze(1)
        nll, lse = _nll_sum(logits, picked, valid)
        ctx.save_for_backward(logits, lse, picked, valid, count)
        return nll / count

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, lse, picked, valid, count = ctx.saved_tensors
        # Left-out rows get no gradient, even when all are (torch's too: nan loss, zero gradient).
        scale = torch.where(valid, grad_out / count, 0.0).unsqueeze(1)
        return _softmax_minus_one_hot(logits, lse, picked, scale), None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of `logits` (N, V) against `targets` (N,), -1 marking positions left out. Compiled, a
    function whose backward inductor fuses into one pass (~8 ms less per step at 4,096 x 4,096 logits on this
    CPU); eager, ATen's own, bit for bit."""
    if torch.compiler.is_compiling():
        return _CrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits, targets, ignore_index=-1)


class _Head(torch.autograd.Function):
    """`h @ weight.T` whose weight gradient is computed as `(h.T @ g).T`, a (C x V) product read transposed,
    rather than autograd's `g.T @ h`, (V x C). Both sum the same N products per entry; on this CPU the wide
    (C x V) output runs ~1.2x faster at C = 128 and ~1.1x at C = 256 with V = 4096, N = 4096 (the head's
    weight gradient was the slowest matmul of a step at 181 GFLOP/s, 279 this way round)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h, weight)
        return h @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        h, weight = ctx.saved_tensors
        return grad @ weight, (h.t() @ grad).t()


def head_logits(x: Tensor, weight: Tensor) -> Tensor:
    """`F.linear(x, weight)` for the output head: `x` (..., C), `weight` (V, C). oneDNN's product where
    `cpumatmul` routes fp32 there; else compiled without autocast, the product of `_Head`, the same values with
    the weight gradient up to rounding; eager or under autocast, ATen's own, bit for bit."""
    if (torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)
            and not cpumatmul.takes(x, weight)):
        return _Head.apply(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[0])
    return cpumatmul.linear(x, weight)
