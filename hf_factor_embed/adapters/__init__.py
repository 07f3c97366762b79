"""Registry of per-architecture adapters, keyed by ``config.model_type``, with a generic fallback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EmbeddingAdapter
from .bert import BertAdapter
from .generic import GenericAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

_REGISTRY: dict[str, EmbeddingAdapter] = {}


def register_adapter(adapter: EmbeddingAdapter | type[EmbeddingAdapter], *, override: bool = False) -> None:
    """Make ``adapter`` serve every ``model_type`` it lists (an instance or a class taking no arguments)."""
    instance = adapter() if isinstance(adapter, type) else adapter
    if not instance.model_types:
        raise ValueError(f"{instance.name} lists no model_types to serve")
    for model_type in instance.model_types:
        if model_type in _REGISTRY and not override:
            raise ValueError(
                f"model_type {model_type!r} already has {_REGISTRY[model_type].name}; pass override=True to replace it"
            )
    for model_type in instance.model_types:
        _REGISTRY[model_type] = instance


def get_adapter(model: PreTrainedModel) -> EmbeddingAdapter:
    """The adapter registered for the model's ``model_type``, else the generic fallback."""
    return _REGISTRY.get(getattr(model.config, "model_type", None), GenericAdapter())


for _adapter in (BertAdapter, GPT2Adapter, LlamaAdapter):
    register_adapter(_adapter)

__all__ = ["EmbeddingAdapter", "GenericAdapter", "get_adapter", "register_adapter"]
