"""GPT-2: ``wte`` tied to ``lm_head``, and learned absolute positions in ``wpe``."""

from .base import EmbeddingAdapter


class GPT2Adapter(EmbeddingAdapter):
    model_types = ("gpt2",)
    extra_embeddings = {"position": "wpe"}
