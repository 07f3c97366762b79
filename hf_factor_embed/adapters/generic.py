"""The fallback for any PreTrainedModel exposing get_input_embeddings / get_output_embeddings."""

from .base import EmbeddingAdapter


class GenericAdapter(EmbeddingAdapter):
    """Token embedding and output head through the model's own accessors; no other embeddings."""
