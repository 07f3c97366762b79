"""Plain truncated SVD: the unweighted baseline every other method is measured against."""

from __future__ import annotations

from .base import FactorizationMethod, FactorizationTask, Factors
from .lowrank import weighted_lowrank


class SVDMethod(FactorizationMethod):
    """Best rank-r approximation in the Frobenius norm, every row and column weighted alike."""

    name = "svd"

    def factorize(self, task: FactorizationTask) -> Factors:
        return Factors(*weighted_lowrank(task.weight, task.rank))
