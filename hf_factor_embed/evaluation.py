"""Perplexity of a causal LM over fixed windows of a token stream: the quality figure used throughout."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, window: int = 512, batch_size: int = 4) -> float:
    """exp(mean next-token loss) over consecutive, non-overlapping ``window``-token windows of ``token_ids``.

    Every window is scored on its own (no context carried over), so the figure depends only on the text, the
    window and the model; a trailing partial window is dropped.
    """
    ids = token_ids.reshape(-1)
    n = ids.numel() // window
    if n == 0:
        raise ValueError(f"need at least {window} tokens, got {ids.numel()}")
    windows = ids[: n * window].view(n, window)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)
