"""Token-frequency weighting: rows of W are fitted in proportion to how often their token occurs.

Plain SVD spends its rank on the ~half of a 49k vocabulary that real text never uses; weighting each row's
squared error by (count + 1) moves the rank to the tokens that matter. The +1 keeps unseen tokens fitted a little.
"""

from __future__ import annotations

import torch

from .base import FactorizationMethod, FactorizationTask, Factors
from .lowrank import weighted_lowrank


def row_weights(task: FactorizationTask, smoothing: float = 1.0) -> torch.Tensor:
    counts = task.stats.token_counts.double()
    if counts.shape[0] != task.weight.shape[0]:
        raise ValueError(f"token counts cover {counts.shape[0]} tokens but the matrix has {task.weight.shape[0]} rows")
    return counts + smoothing


class FrequencyMethod(FactorizationMethod):
    name = "frequency"
    needs = frozenset({"token_counts"})
    uses = frozenset({"token_counts"})

    def factorize(self, task: FactorizationTask) -> Factors:
        return Factors(*weighted_lowrank(task.weight, task.rank, row_weights=row_weights(task)))
