"""What a factorization method receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..calibration_stats import CalibrationStats


@dataclass
class FactorizationTask:
    """One matrix to factorize.

    Args:
        weight: the dense V x d matrix.
        rank: the rank r of the factors.
        roles: the roles the factors will serve: ``("input",)``, ``("output",)`` or ``("input", "output")``
            for a tied pair.
        stats: calibration statistics (token counts, hidden-state covariances), when the caller has them.
    """

    weight: torch.Tensor
    rank: int
    roles: tuple[str, ...]
    stats: CalibrationStats | None = None


class FactorizationMethod:
    """A way to pick factors. Subclasses set ``name`` and implement :meth:`factorize`."""

    name: ClassVar[str]
    #: Which calibration statistics the method needs; an empty set means it runs without calibration.
    needs: ClassVar[frozenset[str]] = frozenset()

    def factorize(self, task: FactorizationTask) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (A, B) with A: V x r, B: r x d, float32 on the CPU."""
        raise NotImplementedError
