"""Pick the smallest rank whose perplexity on held-out calibration text stays within a target of the dense one.

Each candidate is evaluated by swapping its dense equivalent into the model's weights for one evaluation, so the
search never builds layers; it bisects over ranks (multiples of 8) assuming quality grows with rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..factorize import Factors
from ..measure.perplexity import perplexity

logger = logging.getLogger(__name__)


@torch.no_grad()
def smallest_rank_within(
    model: nn.Module,
    modules: dict[str, nn.Module],
    factorize: Callable[[int], dict[str, Factors]],
    holdouts: Mapping[str, torch.Tensor],
    target_ratio: float,
    max_rank: int,
    step: int = 8,
    bos_id: int | None = None,
) -> tuple[int, dict[str, float]]:
    """(rank, its perplexity ratio to dense on each held-out text) for the smallest multiple of ``step`` (or
    ``max_rank``) whose ratio is at most ``target_ratio`` on *every* held-out text: the worst source decides.

    ``modules`` maps role -> the dense module whose weight gets each candidate; ``factorize(rank)`` returns the
    factors of every factorized role (a tied head's role is absent: it reads the embedding's swapped weight).
    """

    def perplexities() -> dict[str, float]:
        return {
            name: perplexity(model, ids, window=min(512, ids.numel()), bos_id=bos_id) for name, ids in holdouts.items()
        }

    dense = perplexities()
    originals = {role: m.weight.data for role, m in modules.items()}

    def ratios(rank: int) -> dict[str, float]:
        factors = factorize(rank)
        try:
            for role, f in factors.items():
                modules[role].weight.data = f.dense(originals[role])
            found = {name: ppl / dense[name] for name, ppl in perplexities().items()}
        finally:
            for role, m in modules.items():
                m.weight.data = originals[role]
        logger.info("rank search: rank %d -> held-out ratios %s", rank, {k: round(v, 4) for k, v in found.items()})
        return found

    candidates = sorted({*range(step, max_rank, step), max_rank})
    lo, hi = 0, len(candidates) - 1
    best = (candidates[hi], None)
    while lo <= hi:
        mid = (lo + hi) // 2
        found = ratios(candidates[mid])
        if max(found.values()) <= target_ratio:
            best, hi = (candidates[mid], found), mid - 1
        else:
            lo = mid + 1
    if best[1] is None:
        best = (candidates[-1], ratios(candidates[-1]))
    return best
