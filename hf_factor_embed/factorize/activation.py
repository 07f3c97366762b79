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
from .base import FactorizationMethod, FactorizationTask, Factors
from .frequency import row_weights
from .lowrank import weighted_lowrank


def normalized_cov(task: FactorizationTask) -> torch.Tensor | None:
    """C scaled to mean eigenvalue 1, for a matrix that serves the output side; None otherwise."""
    if OUTPUT not in task.roles or task.stats is None or task.stats.hidden_cov is None:
        return None
    cov = task.stats.hidden_cov.double()
    return cov / (torch.trace(cov) / cov.shape[0])


class ActivationMethod(FactorizationMethod):
    """Two-sided weighting diag(count + 1)^(1/2) W C^(1/2); input-only matrices fall back to frequency."""

    name = "activation"
    needs = uses = frozenset({"token_counts", "hidden_cov"})

    def factorize(self, task: FactorizationTask) -> Factors:
        return Factors(
            *weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task), col_cov=normalized_cov(task))
        )


class TiedJointMethod(FactorizationMethod):
    """One pair of factors for a tied embedding and head, under the sum of both sides' objectives."""

    name = "joint"
    needs = uses = frozenset({"token_counts", "hidden_cov"})

    def __init__(self, mix: float = 0.3) -> None:
        self.mix = mix

    def factorize(self, task: FactorizationTask) -> Factors:
        metric = normalized_cov(task)
        if metric is not None and INPUT in task.roles:
            metric = metric + self.mix * torch.eye(metric.shape[0], dtype=metric.dtype)
        return Factors(*weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task), col_cov=metric))
