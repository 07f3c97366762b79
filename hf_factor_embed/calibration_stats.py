"""Statistics gathered from calibration text, consumed by the data-aware factorization methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CalibrationStats:
    """Args:
    token_counts: how often each token id occurs in the calibration text (V,).
    hidden_cov: second moment E[h h^T] of the final hidden states fed to the output head (d x d).
    num_tokens: how many tokens the statistics were gathered from.
    """

    token_counts: torch.Tensor | None = None
    hidden_cov: torch.Tensor | None = None
    num_tokens: int = 0
