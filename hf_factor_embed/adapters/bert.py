"""BERT family: word embeddings, the MLM decoder (with its bias), absolute positions and token types."""

from .base import EmbeddingAdapter


class BertAdapter(EmbeddingAdapter):
    model_types = ("bert",)
    extra_embeddings = {
        "position": "embeddings.position_embeddings",
        "token_type": "embeddings.token_type_embeddings",
    }
