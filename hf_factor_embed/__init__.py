"""hf-factor-embed: low-rank factorized embeddings and output heads for Hugging Face Transformers.

Importing the package registers its transformers integration, so ``from_pretrained`` rebuilds factorized
checkpoints. The heavier parts (calibration, recovery recipes, CLI) load only when used.
"""

from . import quiet  # noqa: F401  (first: its filters must stand before transformers' quantizers import torchao)
from .adapters import EmbeddingAdapter, get_adapter, register_adapter
from .calibration.stats import CalibrationStats
from .config import FactorEmbedConfig
from .errors import AlreadyPatchedError, CheckpointError, FactorEmbedError, UnsupportedModelError
from .factorize import available_methods, register_method
from .layers.factorized import FactorizedEmbedding, FactorizedLayer, FactorizedLMHead
from .pipeline.densify import densify
from .pipeline.patch import patch_model
from .quantizer.hf_quantizer import register as _register

__version__ = "0.1.0"

_register()

__all__ = [
    "AlreadyPatchedError",
    "CalibrationStats",
    "CheckpointError",
    "EmbeddingAdapter",
    "FactorEmbedConfig",
    "FactorEmbedError",
    "FactorizedEmbedding",
    "FactorizedLMHead",
    "FactorizedLayer",
    "UnsupportedModelError",
    "available_methods",
    "densify",
    "get_adapter",
    "patch_model",
    "register_adapter",
    "register_method",
]
