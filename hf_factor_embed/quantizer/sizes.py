"""Bytes a factorized embedding takes as stored, counted from its layout (:class:`~hf_factor_embed.layers.layout.
LayerLayout`): the plan budgets a layout before any layer exists, ``compress`` reports a model's, with one count."""

from __future__ import annotations

import torch

from ..config import FactorEmbedConfig
from ..layers.layout import LayerLayout
from .rounding import stored_bytes
from .structure import factorized_layers


def layout_bytes(layout: LayerLayout, config: FactorEmbedConfig, element_size: int = 4) -> int:
    """Bytes a layer holding ``layout`` takes in a checkpoint written with ``config`` (integer factors at their
    bits, a product-coded tail's rows outside the band where it skips the band); ``element_size``: the bytes of a
    float value (the integers, the codes and the fp16 columns have their own)."""
    total = 0
    for name, shape in layout.shapes().items():
        fixed = layout.dtype_of(name, torch.float32)
        size = element_size if fixed == torch.float32 else torch.empty(0, dtype=fixed).element_size()
        total += stored_bytes(config, name, shape, size, band_rows=layout.dense_rows)
    return total


def embedding_bytes(model) -> dict:
    """Bytes the factorized embeddings of ``model`` take as stored (a tied pair once), and the dense fp32 bytes they
    replace: ``{"stored", "dense_fp32", "share"}``."""
    config = model.config.quantization_config
    stored, dense, seen = 0, 0, set()
    for layer in factorized_layers(model).values():
        if id(layer.weight) in seen:
            continue
        seen.add(id(layer.weight))
        layout = layer.layout
        dense += layout.num_embeddings * layout.embedding_dim * 4
        stored += layout_bytes(layout, config, layer.basis.element_size())
    return {"stored": stored, "dense_fp32": dense, "share": round(stored / dense, 4) if dense else None}
