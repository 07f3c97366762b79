"""Integer factors in the checkpoint (``bits`` set): what ``save_pretrained`` writes instead of the float factors,
and how ``from_pretrained`` reads them back. The arithmetic is in :mod:`.quantize`.

Saving: the quantizer's ``get_state_dict_and_metadata`` (transformers' hook for quantized state dicts) replaces
each float factor ``<module>.<name>`` by ``<name>_q`` and ``<name>_scale``; a tied head's factors are the
embedding's and are written once. Loading: before the weights load, each factorized layer gets placeholder
Parameters under those names, so transformers reads them like any weight; afterwards they become the float
factors again and the placeholders go. The float factors' keys are declared as expected-missing.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import FactorEmbedConfig
from .errors import CheckpointError
from .layers import HEAD_LAYOUT_TENSORS, FactorizedLayer
from .quantize import (
    dequantize,
    dequantize_column_major,
    held_dtype,
    quantize,
    round_in_place,
    stored_dtype,
    stored_shapes,
    stored_tensors,
)
from .structure import factorized_layers, retie

Q, SCALE = "_q", "_scale"


def _owned(model: nn.Module, config: FactorEmbedConfig) -> dict[str, tuple[FactorizedLayer, str]]:
    """``module.name`` -> (layer, tensor name) for every tensor ``config`` stores as integers, each shared tensor
    once (tied heads skip)."""
    seen, owned = set(), {}
    for module_name, layer in factorized_layers(model).items():
        for name in stored_tensors(config):
            tensor = getattr(layer, name, None)
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                owned[f"{module_name}.{name}"] = (layer, name)
    return owned


@torch.no_grad()
def balance_factors(layer: FactorizedLayer) -> None:
    """Rescale A's columns to unit RMS and B's rows inversely: A @ B is unchanged, but every column of A then
    uses its quantization grid. The factorizations leave A's columns of very unequal size, and a group's scale
    follows its largest column, so int4 rounded the small ones to nothing (``python benchmarks/pareto.py``, r=256
    all in int4, pydoc held back / licenses: 18.65 / 68.88 unbalanced, 17.61 / 47.45 balanced)."""
    rms = layer.weight.float().pow(2).mean(0).sqrt()
    scale = torch.where(rms > 0, rms, torch.ones_like(rms)).to(layer.weight.dtype)
    layer.weight.div_(scale)
    layer.basis.mul_(scale.unsqueeze(1))


def round_factors(model: nn.Module, config: FactorEmbedConfig) -> None:
    """Round every float factor to its stored value (in place; shared tensors once), balancing A and B first."""
    for layer in {id(layer.weight): layer for layer in factorized_layers(model).values()}.values():
        balance_factors(layer)
    for layer, name in _owned(model, config).values():
        tensor = getattr(layer, name)
        round_in_place(tensor, *config.precision(name), dtype=held_dtype(name, tensor.dtype))


def quantized_state_dict(
    model: nn.Module, config: FactorEmbedConfig, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """``state`` (default: the model's state dict) with every float factor replaced by its integers and scales."""
    state = dict(model.state_dict() if state is None else state)
    owned = _owned(model, config)
    floats = {key: state.get(key, getattr(layer, name)) for key, (layer, name) in owned.items()}
    for module_name in factorized_layers(model):
        for name in stored_tensors(config):
            state.pop(f"{module_name}.{name}", None)
    for key, (_, name) in owned.items():
        q, scale = quantize(floats[key], *config.precision(name))
        state[key + Q], state[key + SCALE] = q, scale
    return state


def add_placeholders(model: nn.Module, config: FactorEmbedConfig) -> list[str]:
    """Register ``<name>_q`` / ``<name>_scale`` Parameters for transformers to load into; returns the regexes of
    the float factors' keys, which the checkpoint does not hold."""
    missing = []
    for key, (layer, name) in _owned(model, config).items():
        rows, cols = getattr(layer, name).shape
        bits, group = config.precision(name)
        q_shape, scale_shape = stored_shapes(rows, cols, bits, group)
        device = getattr(layer, name).device
        q = torch.zeros(q_shape, dtype=stored_dtype(bits), device=device)
        layer.register_parameter(name + Q, nn.Parameter(q, requires_grad=False))
        scale = torch.ones(scale_shape, dtype=torch.float16, device=device)
        layer.register_parameter(name + SCALE, nn.Parameter(scale, requires_grad=False))
        missing.append(rf"(^|\.){re.escape(key)}$")
    # a tied head's float factors are tied targets, restored by tying; declared too, for models loaded headless
    for module_name, layer in factorized_layers(model).items():
        present = [n for n in stored_tensors(config) if getattr(layer, n, None) is not None]
        missing += [rf"(^|\.){re.escape(module_name)}\.{n}$" for n in present]
    return missing


def _check_scales(scale: torch.Tensor, name: str) -> None:
    """Saved scales are finite and positive (:func:`.quantize.quantize` clamps them); anything else is damage."""
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        bad = int((~torch.isfinite(scale) | (scale <= 0)).sum())
        raise CheckpointError(
            f"{bad} of the {scale.numel()} scales in {name} are zero, negative or not finite: the checkpoint is "
            "damaged; save the model again from its float factors"
        )


@torch.no_grad()
def restore_from_placeholders(model: nn.Module, config: FactorEmbedConfig) -> None:
    """Turn the loaded integers back into the float factors, drop the placeholders, tie again."""
    for module_name, layer in factorized_layers(model).items():
        for name in stored_tensors(config):
            if name + Q not in layer._parameters:
                continue
            target = getattr(layer, name)
            q, scale = layer._parameters.pop(name + Q), layer._parameters.pop(name + SCALE)
            _check_scales(scale.data, f"{module_name}.{name}{SCALE}")
            bits, group = config.precision(name)
            read = dequantize_column_major if name in HEAD_LAYOUT_TENSORS else dequantize
            values = read(q.data, scale.data, bits, target.shape[1], group).to(held_dtype(name, target.dtype))
            if target.device.type == "meta":
                setattr(layer, name, nn.Parameter(values.to(q.device), requires_grad=target.requires_grad))
            else:
                target.data = values.to(target.device)
    retie(model)
