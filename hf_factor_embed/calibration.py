"""Streaming calibration: token counts and the second moment of the hidden states that feed the output head.

Nothing per token is kept: each batch adds to a V-vector of counts and a d x d matrix, so memory is
O(V + d^2) whatever the amount of text. For causal LMs whose head reads the base model's output directly
(LLaMA, GPT-2 and their kin) only the base model runs, sparing the V x d logits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .adapters import get_adapter
from .calibration_stats import CalibrationStats
from .config import OUTPUT

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def tokenize_calibration(data, tokenizer, text_column: str = "text") -> torch.Tensor:
    """One stream of token ids from a tensor, a string, a list of strings or a ``datasets.Dataset``."""
    if isinstance(data, torch.Tensor):
        return data.reshape(-1).long()
    if tokenizer is None:
        raise ValueError("calibration text needs tokenizer=...; pass token ids (a tensor) to do without")
    if isinstance(data, str):
        texts = [data]
    elif hasattr(data, "column_names"):  # a datasets.Dataset
        if text_column not in data.column_names:
            raise ValueError(f"the calibration dataset has no {text_column!r} column; it has {data.column_names}")
        texts = data[text_column]
    else:
        texts = list(data)
    pieces = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in texts if t]
    if not pieces:
        raise ValueError("the calibration data holds no text")
    return torch.cat(pieces)


@torch.no_grad()
def collect_stats(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    *,
    window: int = 512,
    batch_size: int = 4,
    hidden: bool = True,
    progress: bool = True,
) -> CalibrationStats:
    """Token counts over ``token_ids`` and, with ``hidden=True``, E[h h^T] of the head's inputs over them."""
    vocab = get_adapter(model).input_embedding(model).weight.shape[0]
    ids = token_ids.reshape(-1)
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise ValueError(f"calibration token ids must lie in 0..{vocab - 1}: wrong tokenizer for this model?")
    counts = torch.bincount(ids, minlength=vocab).double()
    head = get_adapter(model).get(model, OUTPUT) if hidden else None
    if head is None:
        return CalibrationStats(token_counts=counts, num_tokens=ids.numel())

    d = head.weight.shape[1]
    second_moment = torch.zeros(d, d, dtype=torch.float64)
    seen = 0

    def accumulate(_module, args):
        nonlocal seen
        h = args[0].reshape(-1, d).float()
        second_moment.add_((h.T @ h).double().cpu())
        seen += h.shape[0]

    n_windows = max(1, ids.numel() // window)
    windows = ids[: n_windows * window].view(n_windows, -1) if ids.numel() >= window else ids.view(1, -1)
    device = next(model.parameters()).device
    reads_base_output = type(model).__name__.endswith("ForCausalLM") and hasattr(model, "base_model")
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    handle = head.register_forward_pre_hook(accumulate)
    bar = tqdm(total=windows.shape[0] * windows.shape[1], desc="calibration", unit="tok", disable=not progress)
    try:
        for i in range(0, windows.shape[0], batch_size):
            batch = windows[i : i + batch_size].to(device)
            if reads_base_output and model.base_model is not model:
                accumulate(head, (model.base_model(input_ids=batch).last_hidden_state,))
            else:
                model(input_ids=batch)
            bar.update(batch.numel())
    finally:
        bar.close()
        handle.remove()
        model.train(was_training)
    logger.info("calibration: %d tokens in %.1f s", ids.numel(), time.perf_counter() - started)
    return CalibrationStats(token_counts=counts, hidden_cov=second_moment / max(seen, 1), num_tokens=ids.numel())
