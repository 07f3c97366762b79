"""Perplexity of a causal LM over fixed windows of a token stream: the quality figure used throughout."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..calibration.model_text import model_windows


@torch.no_grad()
def perplexity(
    model,
    token_ids: torch.Tensor,
    window: int = 512,
    batch_size: int = 4,
    progress: bool = False,
    keep: torch.Tensor | None = None,
    unk_id: int | None = None,
    bos_id: int | None = None,
    observe: Callable[[torch.Tensor], None] | None = None,
) -> float:
    """exp(mean next-token loss) over consecutive, non-overlapping ``window``-token windows of ``token_ids``.

    Every window is scored on its own (no context carried over), so the figure depends only on the text, the
    window and the model; a trailing partial window is dropped. ``bos_id``: put it first in every window, as the
    tokenizer puts it before every text (:func:`hf_factor_embed.calibration.model_text.bos_prefix`); each window then
    scores
    ``window - 1`` tokens of text, the first one predicted from ``<bos>`` alone.

    ``keep`` (a boolean per token id) and ``unk_id`` score a vocabulary-trimmed model as vocabtrimmer leaves it:
    ids outside ``keep`` are read as ``unk_id``, cannot be predicted (their logits are dropped), and as targets
    count as ``unk_id``, the one way the trimmed model can name them.

    ``observe``: called with each batch's scored logits (batch, window - 1, V), in order (e.g. a
    :class:`.fidelity.FidelityMeter`): what else is measured on the same windows costs no second pass.
    """
    ids = token_ids.reshape(-1)
    if keep is not None:
        if unk_id is None:
            raise ValueError("a trimmed vocabulary (keep=...) needs unk_id: the id other tokens are read as")
        keep = keep.clone()
        keep[unk_id] = True
        ids = torch.where(keep[ids], ids, torch.full_like(ids, unk_id))
    needed = window - (bos_id is not None)
    if ids.numel() < needed:
        raise ValueError(f"need at least {needed} tokens, got {ids.numel()}")
    windows = model_windows(ids, window, bos_id)
    n = windows.shape[0]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, batch_size), desc="perplexity", disable=not progress, unit="batch"):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        if keep is not None:
            logits[..., ~keep.to(logits.device)] = float("-inf")
        if observe is not None:
            observe(logits)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 128):
    """Mean-pooled last hidden states (the pooling of sentence-transformers' all-MiniLM models), L2-normalised."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state if hasattr(model, "base_model") else model(**batch)[0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(out)


def sentences_of(text: str, limit: int = 512, min_chars: int = 20) -> list[str]:
    """Non-trivial lines of ``text`` (at least ``min_chars`` characters), at most ``limit`` of them."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if len(line) >= min_chars][:limit]


def cosine_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two L2-normalised embedding matrices."""
    return float((reference * other).sum(-1).mean())
