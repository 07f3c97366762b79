"""Activation-aware weighting of the output head, and the tied joint method built on it.

The head's error on a hidden state h is h (W - AB)^T; averaged over calibration text its squared norm is
tr((W - AB) C (W - AB)^T) with C = E[h h^T]. Fitting W C^(1/2) instead of W therefore minimises the logit error
itself rather than a proxy. Rows are weighted by token frequency as well (the two-sided objective).

A tied pair has to serve the input side too, where the error that matters is in the embedding itself (metric I).
The joint method fits one pair of factors under the metric M = C/mean(eig C) + mix * I, which is the sum of
the two sides' objectives (both rows weighted by frequency), solved exactly by one d x d eigendecomposition.
"""

from __future__ import annotations

import torch

from ..config import INPUT, OUTPUT
from .base import FactorizationMethod, FactorizationTask
from .frequency import row_weights
from .lowrank import weighted_lowrank


def normalized_cov(task: FactorizationTask) -> torch.Tensor:
    cov = task.stats.hidden_cov.double()
    return cov / (torch.trace(cov) / cov.shape[0])


class ActivationMethod(FactorizationMethod):
    """Two-sided weighting diag(count + 1)^(1/2) W C^(1/2); input-only matrices fall back to frequency."""

    name = "activation"
    needs = frozenset({"token_counts", "hidden_cov"})

    def factorize(self, task: FactorizationTask) -> tuple[torch.Tensor, torch.Tensor]:
        cov = normalized_cov(task) if OUTPUT in task.roles else None
        return weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task), col_cov=cov)


class TiedJointMethod(FactorizationMethod):
    """One pair of factors for a tied embedding and head, under the sum of both sides' objectives."""

    name = "joint"
    needs = frozenset({"token_counts", "hidden_cov"})

    def __init__(self, mix: float = 1.0) -> None:
        self.mix = mix

    def factorize(self, task: FactorizationTask) -> tuple[torch.Tensor, torch.Tensor]:
        if task.roles == (INPUT,):
            return weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task))
        metric = normalized_cov(task)
        if INPUT in task.roles:
            metric = metric + self.mix * torch.eye(metric.shape[0], dtype=metric.dtype)
        return weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task), col_cov=metric)
