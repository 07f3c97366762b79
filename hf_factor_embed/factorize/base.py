"""What a factorization method receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..calibration.stats import CalibrationStats
from ..layers.layout import LayerLayout
from .product import ProductCodes


@dataclass
class FactorizationTask:
    """One matrix to factorize.

    Args:
        weight: the dense V x d matrix.
        rank: the rank r of the factors.
        roles: the roles the factors will serve: ``("input",)``, ``("output",)`` or ``("input", "output")``
            for a tied pair.
        stats: calibration statistics (token counts, hidden-state covariances), when the caller has them.
        exact_ids: token ids that every method with a band keeps as exact rows whatever the statistics say: the
            special tokens (:func:`hf_factor_embed.calibration.model_text.special_token_ids`), which frame every prompt.
    """

    weight: torch.Tensor
    rank: int
    roles: tuple[str, ...]
    stats: CalibrationStats | None = None
    exact_ids: torch.Tensor | None = None


@dataclass
class Factors:
    """A method's answer: A (V x r), B (r x d), optionally the token ids kept as exact dense rows, and optionally
    product codes added to A @ B (:class:`.product.ProductCodes`)."""

    a: torch.Tensor
    b: torch.Tensor
    dense_index: torch.Tensor | None = None
    tail_codes: ProductCodes | None = None

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    @property
    def layout(self) -> LayerLayout:
        """What a layer holding these factors holds."""
        (v, r), d = self.a.shape, self.b.shape[1]
        k = 0 if self.dense_index is None else self.dense_index.numel()
        codes = self.tail_codes
        if codes is None:
            return LayerLayout(v, d, r, k)
        m, centroids = codes.codebooks.shape[:2]
        return LayerLayout(v, d, r, k, m, centroids, codes.columns.numel())

    def dense(self, weight: torch.Tensor) -> torch.Tensor:
        """The V x d matrix these factors stand for: A @ B, with the band's rows taken exact from ``weight``."""
        out = (self.a @ self.b).to(weight.dtype)
        if self.tail_codes is not None:
            out += self.tail_codes.rows().to(weight.dtype)
        if self.dense_index is not None:
            out[self.dense_index] = weight[self.dense_index]
        return out


class FactorizationMethod:
    """A way to pick factors. Subclasses set ``name`` and implement :meth:`factorize`."""

    name: ClassVar[str]
    #: Which calibration statistics the method needs; an empty set means it runs without calibration.
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Which statistics it uses when they are there (a superset of ``needs``): what calibration should gather.
    uses: ClassVar[frozenset[str]] = frozenset()

    def factorize(self, task: FactorizationTask) -> Factors:
        """Return the factors (float32, on the CPU) for ``task``."""
        raise NotImplementedError
