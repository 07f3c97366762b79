"""Pick the smallest rank whose perplexity on held-out calibration text stays within a target of the dense one.

Each candidate is evaluated by swapping its dense equivalent into the model's weights for one evaluation, so the
search never builds layers; it bisects over ranks (multiples of 8) assuming quality grows with rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from .evaluation import perplexity
from .factorize import Factors

logger = logging.getLogger(__name__)


@torch.no_grad()
def smallest_rank_within(
    model: nn.Module,
    modules: dict[str, nn.Module],
    factorize: Callable[[int], dict[str, Factors]],
    holdout_ids: torch.Tensor,
    target_ratio: float,
    max_rank: int,
    step: int = 8,
) -> tuple[int, float, float]:
    """(rank, its perplexity, dense perplexity) for the smallest multiple of ``step`` (or ``max_rank``) whose
    held-out perplexity is at most ``target_ratio`` times the dense model's.

    ``modules`` maps role -> the dense module whose weight gets each candidate; ``factorize(rank)`` returns the
    factors of every factorized role (a tied head's role is absent: it reads the embedding's swapped weight).
    """
    window = min(512, holdout_ids.numel())
    dense_ppl = perplexity(model, holdout_ids, window=window)
    originals = {role: m.weight.data for role, m in modules.items()}

    def score(rank: int) -> float:
        factors = factorize(rank)
        try:
            for role, f in factors.items():
                modules[role].weight.data = f.dense(originals[role])
            ppl = perplexity(model, holdout_ids, window=window)
        finally:
            for role, m in modules.items():
                m.weight.data = originals[role]
        logger.info("rank search: rank %d -> held-out perplexity %.3f (dense %.3f)", rank, ppl, dense_ppl)
        return ppl

    candidates = sorted({*range(step, max_rank, step), max_rank})
    lo, hi = 0, len(candidates) - 1
    best = (candidates[hi], None)
    while lo <= hi:
        mid = (lo + hi) // 2
        ppl = score(candidates[mid])
        if ppl <= target_ratio * dense_ppl:
            best, hi = (candidates[mid], ppl), mid - 1
        else:
            lo = mid + 1
    if best[1] is None:
        best = (candidates[-1], score(candidates[-1]))
    return best[0], best[1], dense_ppl
