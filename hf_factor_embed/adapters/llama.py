"""LLaMA family: ``embed_tokens`` and ``lm_head``, tied (SmolLM2, Llama 3.2 1B/3B) or not; RoPE has no weights."""

from .base import EmbeddingAdapter


class LlamaAdapter(EmbeddingAdapter):
    model_types = ("llama",)
