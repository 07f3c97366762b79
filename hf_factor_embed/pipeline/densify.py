"""``densify``: undo ``patch_model`` in place, dense modules of the original classes holding A @ B."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..adapters import get_adapter
from ..config import INPUT, OUTPUT, FactorEmbedConfig
from ..errors import FactorEmbedError
from ..layers.factorized import FactorizedLayer
from ..quantizer.hf_quantizer import detach
from ..quantizer.structure import DENSE_SKELETON, factorized_layers, untie_keys

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def densify(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`patch_model` in place: dense modules of the original classes holding A @ B, tying restored."""
    layers = factorized_layers(model)
    if not layers:
        raise FactorEmbedError("densify: the model has no factorized embeddings")
    adapter = get_adapter(model)
    config = _factor_config(model)
    roles = list(config.modules) if config is not None else [INPUT, OUTPUT]
    for role in sorted(roles, key=lambda r: r == INPUT):  # the head first: it may share the input's factors
        layer = adapter.get(model, role)
        if not isinstance(layer, FactorizedLayer):
            continue
        dense = getattr(layer, DENSE_SKELETON, None)
        if dense is None:
            dense = layer.to_dense()
        else:
            dense = dense.to_empty(device=layer.weight.device).to(layer.weight.dtype)
            with torch.no_grad():
                dense.weight.copy_(layer.dense_weight())
                if getattr(layer, "bias", None) is not None:
                    dense.bias.copy_(layer.bias)
        adapter.set(model, role, dense)
    untie_keys(model)
    model.tie_weights()
    detach(model)
    return model


def _factor_config(model: PreTrainedModel) -> FactorEmbedConfig | None:
    qc = getattr(model.config, "quantization_config", None)
    return qc if isinstance(qc, FactorEmbedConfig) else None
