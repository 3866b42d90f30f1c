"""Reference outputs recorded in every checkpoint so `verify` can replay them from the files alone.

Greedy tokens catch gross damage; the loss and next-token log-probabilities on a fixed batch catch
small numeric drift that leaves the argmax unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from slmtrain.generate import greedy_with_margins, next_token_logprobs

# A replayed greedy token may differ from the recorded one only where the recorded top-1/top-2 logit
# margin was below this: there, fp32 reassociation between devices can legitimately flip the argmax.
MARGIN_TOLERANCE = 0.05
# Bounds for the fixed-batch replay: |loss - recorded| and the mean KL(recorded || replayed) per position.
LOSS_TOLERANCE = 1e-3
KL_TOLERANCE = 1e-4
REFERENCE_POSITIONS = 32


@contextlib.contextmanager
def _eval_fp32(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
            if torch.cuda.is_available():
                with torch.autocast(device_type="cuda", enabled=False):
                    yield
            else:
                yield
    finally:
        model.train(was_training)


def compute_reference(model: torch.nn.Module, prompts: list[tuple[str, list[int]]], n_tokens: int,
                      batch: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Greedy continuations with margins for each (prompt, ids), and the fixed-batch loss/log-probs.

    Args:
        model: the unwrapped model (no DDP/compile wrapper), on any device.
        prompts: prompt text with its token ids.
        n_tokens: greedy tokens recorded per prompt.
        batch: (1, P+1) token ids; inputs are batch[:, :-1], targets batch[:, 1:].

    Returns:
        JSON-able metadata and the tensors to store beside it (CPU, fp32 / int64).
    """
    device = next(model.parameters()).device
    with _eval_fp32(model):
        gens = []
        for text, ids in prompts:
            tokens, margins = greedy_with_margins(model, ids, n_tokens)
            gens.append({"prompt": text, "prompt_ids": ids, "tokens": tokens, "margins": margins})
        x = batch[:, :-1].to(device)
        y = batch[:, 1:].to(device)
        _, loss = model(x, y)
        logprobs = next_token_logprobs(model, x)[0].float().cpu()
    meta = {"generations": gens, "loss": float(loss.item()), "positions": int(x.shape[1]),
            "margin_tolerance": MARGIN_TOLERANCE, "loss_tolerance": LOSS_TOLERANCE, "kl_tolerance": KL_TOLERANCE}
    return meta, {"batch": batch.cpu().to(torch.int64), "logprobs": logprobs}
