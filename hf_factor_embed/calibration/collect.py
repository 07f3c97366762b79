"""Streaming calibration: token counts, the second moment of the hidden states that feed the output head, and
the model's mean next-token distribution.

Nothing per token is kept: each batch adds to V-vectors and a d x d matrix, so memory is O(V + d^2) whatever
the amount of text. For causal LMs whose head reads the base model's output directly
(LLaMA, GPT-2 and their kin) only the base model runs; the head's V-wide output is computed for every
``PROBS_STRIDE``-th position only, and only when the method uses ``expected_probs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..config import OUTPUT
from ..errors import FactorEmbedError
from .model_text import model_windows
from .stats import CalibrationStats

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def tokenize_calibration(data, tokenizer, text_column: str = "text") -> torch.Tensor:
    """One stream of token ids from a tensor, a string, a list of strings or a ``datasets.Dataset``."""
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise FactorEmbedError(
                f"calibration token ids must be an integer tensor, got {data.dtype}: pass the tokenizer's input_ids "
                "(or text with tokenizer=...)"
            )
        return data.reshape(-1).long()
    if isinstance(data, str):
        texts = [data]
    elif hasattr(data, "column_names"):  # a datasets.Dataset
        if text_column not in data.column_names:
            raise FactorEmbedError(f"the calibration dataset has no {text_column!r} column; it has {data.column_names}")
        texts = data[text_column]
    else:
        texts = list(data) if isinstance(data, Iterable) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise FactorEmbedError(
                f"calibration takes token ids (a tensor), text (a string, a list of strings, a datasets.Dataset) or "
                f"name -> one of those; got {type(data).__name__}: {str(data)[:40]!r}"
            )
    if tokenizer is None:
        raise FactorEmbedError("calibration text needs tokenizer=...; pass token ids (a tensor) to do without")
    pieces = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in texts if t]
    if not pieces:
        raise FactorEmbedError("the calibration data holds no text; give a non-empty string, list or dataset")
    return torch.cat(pieces)


#: Every how many positions the head's full distribution is computed for ``expected_probs``: the mean over a
#: quarter of the positions ranks tokens as well as the mean over all of them (measured on SmolLM2), for a
#: quarter of the V x d head work.
PROBS_STRIDE = 4
_PROBS_CHUNK = 1024  # rows of logits (V floats each) in memory at once


@torch.no_grad()
def collect_stats(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    *,
    window: int = 512,
    batch_size: int = 4,
    statistics: Iterable[str] = CalibrationStats.KINDS,
    progress: bool = True,
    model_tokens: int | None = None,
    bos_id: int | None = None,
) -> CalibrationStats:
    """Token counts over ``token_ids`` and, when asked for in ``statistics`` and the model has an output head,
    E[h h^T] of the head's inputs and the model's mean next-token distribution over them.

    ``model_tokens``: run the model over the first ``model_tokens`` tokens only. Counting costs nothing, and on a
    large vocabulary the counts of all the text rank far more of the served tokens for the band than a short
    text does, while the model's statistics settle on a few thousand tokens. ``bos_id``: first in every window the
    model reads, as the tokenizer feeds text (:func:`hf_factor_embed.calibration.model_text.bos_prefix`).
    """
    vocab = get_adapter(model).input_embedding(model).weight.shape[0]
    ids = token_ids.reshape(-1)
    if ids.numel() == 0:
        raise FactorEmbedError("the calibration data holds no tokens; give text (with tokenizer=...) or token ids")
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise FactorEmbedError(f"calibration token ids must lie in 0..{vocab - 1}: wrong tokenizer for this model?")
    counts = torch.bincount(ids, minlength=vocab).double()
    wanted = set(statistics)
    head = get_adapter(model).get(model, OUTPUT) if wanted & {"hidden_cov", "expected_probs"} else None
    if head is None:
        return CalibrationStats(token_counts=counts, num_tokens=ids.numel())

    d = head.weight.shape[1]
    second_moment = torch.zeros(d, d, dtype=torch.float64) if "hidden_cov" in wanted else None
    prob_sum = torch.zeros(vocab, dtype=torch.float64) if "expected_probs" in wanted else None
    seen = sampled = 0

    def accumulate(h: torch.Tensor) -> None:
        nonlocal seen, sampled
        seen += h.shape[0]
        if second_moment is not None:
            second_moment.add_((h.T @ h).double().cpu())
        if prob_sum is not None:
            for rows in h[::PROBS_STRIDE].split(_PROBS_CHUNK):
                logits = torch.nn.functional.linear(rows, head.weight.float(), _float_or_none(head.bias))
                prob_sum.add_(torch.softmax(logits, dim=-1).sum(0).double().cpu())
                sampled += rows.shape[0]

    started = time.perf_counter()
    model_ids = ids if model_tokens is None else ids[:model_tokens]
    for h in iter_head_inputs(model, model_ids, window=window, batch_size=batch_size, progress=progress, bos_id=bos_id):
        accumulate(h.reshape(-1, d).float())
    logger.info("calibration: %d tokens in %.1f s", ids.numel(), time.perf_counter() - started)
    return CalibrationStats(
        token_counts=counts,
        hidden_cov=None if second_moment is None else second_moment / max(seen, 1),
        expected_probs=None if prob_sum is None else prob_sum / max(sampled, 1),
        num_tokens=ids.numel(),
    )


def collect_source_stats(
    model: PreTrainedModel, sources: Mapping[str, torch.Tensor], **options
) -> tuple[CalibrationStats, dict[str, int]]:
    """Statistics of named sources (name -> token ids), gathered one source at a time and combined with equal
    weights, so each source's tokens rank for the band whatever its length; and the tokens gathered from each.
    ``options``: :func:`collect_stats`'s keywords."""
    parts = {name: collect_stats(model, ids, **options) for name, ids in sources.items()}
    stats = CalibrationStats.combine(*parts.values(), equal=True) if len(parts) > 1 else next(iter(parts.values()))
    return stats, {name: part.num_tokens for name, part in parts.items()}


def _float_or_none(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.float()


@torch.no_grad()
def iter_head_inputs(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    *,
    window: int = 512,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "calibration",
    bos_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """The hidden states that reach the output head, one batch of ``window``-token windows at a time, ``bos_id``
    first in each where given (as the tokenizer feeds text:
    :func:`hf_factor_embed.calibration.model_text.model_windows`).

    For causal LMs whose head reads the base model's output directly only the base model runs; otherwise the
    whole model runs with the head hooked.
    """
    head = get_adapter(model).get(model, OUTPUT)
    ids = token_ids.reshape(-1)
    # a window longer than the model's positions would index past its position table (BERT, GPT-2)
    window = min(window, getattr(model.config.get_text_config(), "max_position_embeddings", None) or window)
    windows = model_windows(ids, window, bos_id)
    device = next(model.parameters()).device
    reads_base_output = type(model).__name__.endswith("ForCausalLM") and hasattr(model, "base_model")
    caught: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, args: caught.append(args[0]))
    was_training = model.training
    model.eval()
    bar = tqdm(total=windows.shape[0] * windows.shape[1], desc=desc, unit="tok", disable=not progress)
    try:
        for i in range(0, windows.shape[0], batch_size):
            batch = windows[i : i + batch_size].to(device)
            if reads_base_output and model.base_model is not model:
                yield model.base_model(input_ids=batch).last_hidden_state
            else:
                model(input_ids=batch)
                yield caught.pop()
            bar.update(batch.numel())
    finally:
        bar.close()
        handle.remove()
        model.train(was_training)
