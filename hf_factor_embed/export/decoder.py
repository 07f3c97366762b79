"""A decoder-only model as a function of tensors: ``(input_ids, *past) -> (logits, *present)``.

Exported graphs cannot hold transformers' ``Cache`` objects, so the key/value cache travels as explicit inputs and
outputs, one key and one value tensor ``(batch, kv_heads, positions, head_dim)`` per layer, the interface of
optimum's and transformers.js's ONNX decoders (``past_key_values.{i}.key`` in, ``present.{i}.key`` out). Positions
continue from the past's length. Only the last position's logits are returned (``logits_to_keep=1``): that is what
greedy decoding reads, and with Gemma-3's 262,144-token vocabulary a prefill's full logits would cost more than the
rest of the step.

Every layer's cache is a full one (``DynamicLayer``); a sliding-window layer still attends only within its window,
because the attention mask follows the config's ``layer_types``, so continuations past the window stay exact.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FactorEmbedError
from ..layers.factorized import FactorizedEmbedding
from ..quantizer.structure import factorized_layers
from .layers import ExportedEmbedding, ExportedFactors, ExportedLMHead
from .target import PLAIN, RuntimeLayout


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder's key/value cache."""
    text = config.get_text_config(decoder=True)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers, heads, head_dim


class CachedDecoder(nn.Module):
    """``model`` (a causal LM) with its cache as tensors; the factorized layers swapped for stored-factor ones."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.num_layers = cache_shape(model.config)[0]

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(ddp_cache_data=pairs)
        start = past[0].shape[2]
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        out = self.model(
            input_ids=input_ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)

    def input_names(self) -> list[str]:
        return ["input_ids"] + [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]

    def output_names(self) -> list[str]:
        return ["logits"] + [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]


class HiddenStates(nn.Module):
    """An encoder as ``(input_ids, attention_mask) -> last_hidden_state``: what feature extraction reads."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]

    def output_names(self) -> list[str]:
        return ["last_hidden_state"]


def use_stored_factors(model, shortlist: int | None = None, runtime: RuntimeLayout = PLAIN) -> int:
    """Swap every factorized layer of ``model`` (in place) for its stored-factor twin; a tied pair keeps sharing
    one set of factors; ``shortlist`` k: the head reads the tail's codes for k tokens a step (:mod:`.head`);
    ``runtime``: how the file's runtime reads the factors (:mod:`.target`: ``RUNTIMES[format]``). Returns how many
    layers were swapped."""
    config = getattr(model.config, "quantization_config", None)
    layers = factorized_layers(model)
    if config is None or not layers:
        raise FactorEmbedError(
            "the model has no factorized layers; export a folder that compress or save_pretrained wrote"
        )
    shared: dict[int, ExportedFactors] = {}
    for name, layer in layers.items():
        if id(layer.weight) not in shared:  # a tied head meets its embedding's factors here
            shared[id(layer.weight)] = ExportedFactors(
                layer, config, name, shortlist=shortlist is not None, runtime=runtime
            )
        factors = shared[id(layer.weight)]
        swap = (
            ExportedEmbedding(layer, factors)
            if isinstance(layer, FactorizedEmbedding)
            else ExportedLMHead(layer, factors, shortlist)
        )
        model.set_submodule(name, swap)
    return len(layers)
