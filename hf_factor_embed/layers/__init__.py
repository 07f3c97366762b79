"""The factorized layers (:mod:`.factorized`) and what one holds (:mod:`.layout`); imports nothing of the package."""

from .factorized import FactorizedEmbedding, FactorizedLayer, FactorizedLMHead

__all__ = ["FactorizedEmbedding", "FactorizedLMHead", "FactorizedLayer"]
