"""Statistics gathered from calibration text, consumed by the data-aware factorization methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CalibrationStats:
    """Args:
    token_counts: how often each token id occurs in the calibration text (V,).
    hidden_cov: second moment E[h h^T] of the final hidden states fed to the output head (d x d).
    expected_probs: the model's own next-token distribution averaged over calibration positions (V,), summing
        to 1. It spreads weight over every token the model finds plausible in such text, not only the ones
        that happened to occur, so it ranks tokens more robustly than counts from a short text.
    num_tokens: how many tokens the statistics were gathered from.
    """

    token_counts: torch.Tensor | None = None
    hidden_cov: torch.Tensor | None = None
    expected_probs: torch.Tensor | None = None
    num_tokens: int = 0

    #: The statistics a method can ask for (``FactorizationMethod.uses``), in the order they are gathered.
    KINDS = ("token_counts", "hidden_cov", "expected_probs")

    def available(self) -> set[str]:
        """Names of the statistics present."""
        return {k for k in self.KINDS if getattr(self, k) is not None}

    @classmethod
    def combine(cls, *parts: CalibrationStats, equal: bool = False) -> CalibrationStats:
        """The statistics of the concatenated texts: counts add up, means are weighted by tokens.

        ``equal=True`` weighs every part alike whatever its length, as if each had the same number of tokens:
        counts are rescaled to one share of the total each, means averaged. That is how named sources combine, so a
        small source's tokens are not crowded out of the band by a larger one's. A statistic missing from any
        part is missing from the result. Use it to calibrate on several sources gathered one at a time.
        """
        if not parts:
            raise ValueError("combine() needs at least one CalibrationStats")
        total = sum(p.num_tokens for p in parts)
        if equal:
            weights = [1 / len(parts)] * len(parts)
        else:
            weights = [p.num_tokens / max(total, 1) for p in parts]
        out = cls(num_tokens=total)
        for kind in cls.KINDS:
            values = [getattr(p, kind) for p in parts]
            if any(v is None for v in values):
                continue
            if kind == "token_counts" and equal:
                shares = zip(weights, values, parts, strict=True)
                scaled = [w * total * v.double() / max(p.num_tokens, 1) for w, v, p in shares]
                setattr(out, kind, torch.stack(scaled).sum(0))
            elif kind == "token_counts":
                setattr(out, kind, torch.stack([v.double() for v in values]).sum(0))
            else:
                setattr(out, kind, sum(w * v.double() for w, v in zip(weights, values, strict=True)))
        return out
