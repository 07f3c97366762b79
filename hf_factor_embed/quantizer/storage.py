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

from ..config import FactorEmbedConfig
from ..errors import CheckpointError
from ..layers.factorized import HEAD_LAYOUT_TENSORS, FactorizedLayer
from .rounding import (
    BAND_SKIPPING_TENSORS,
    TAIL_COLUMN_TENSOR,
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
    for layer in _band_skipping_layers(model, config).values():  # what the checkpoint does not hold reads as zero
        for name in BAND_SKIPPING_TENSORS:
            getattr(layer, name).data[layer.dense_index] = 0


def _band_skipping_layers(model: nn.Module, config: FactorEmbedConfig) -> dict[str, FactorizedLayer]:
    """``module`` -> layer for each product-coded tail whose checkpoint holds only the rows outside its band (a tied
    head's are its embedding's: skipped)."""
    if not getattr(config, "tail_skips_band", False):
        return {}
    seen, out = set(), {}
    for module_name, layer in factorized_layers(model).items():
        if layer.has_tail_codes and layer.num_dense_rows and id(layer.tail_codes) not in seen:
            seen.add(id(layer.tail_codes))
            out[module_name] = layer
    return out


def outside_band(layer: FactorizedLayer) -> torch.Tensor:
    """The token ids outside ``layer``'s band, in order: the rows a band-skipping tail stores."""
    return outside_band_mask(layer).nonzero().squeeze(1)


def outside_band_mask(layer: FactorizedLayer) -> torch.Tensor:
    """(V,) bool: True for the tokens outside ``layer``'s band."""
    keep = torch.ones(layer.weight.shape[0], dtype=torch.bool, device=layer.dense_index.device)
    keep[layer.dense_index] = False
    return keep


def _skip_band_rows(model, config, state: dict[str, torch.Tensor]) -> None:
    """Keep only the rows outside the band of each band-skipping tensor in ``state`` (one new tensor per shared
    storage, so a tied head's key still shares the embedding's and transformers writes it once)."""
    if not _band_skipping_layers(model, config):
        return
    packed: dict[tuple, torch.Tensor] = {}
    for module_name, layer in factorized_layers(model).items():  # a tied head too: its keys may be in ``state``
        if not (layer.has_tail_codes and layer.num_dense_rows):
            continue
        rows = outside_band(layer)
        suffixes = ("tail_codes", *(TAIL_COLUMN_TENSOR + x for x in (("", Q, SCALE))))
        for key in (f"{module_name}.{suffix}" for suffix in suffixes):
            tensor = state.get(key)
            if tensor is not None:
                same = (tensor.data_ptr(), tuple(tensor.shape))  # a state dict's tied entries: one storage
                packed.setdefault(same, tensor[rows.to(tensor.device)])
                state[key] = packed[same]


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
    _skip_band_rows(model, config, state)
    return state


def add_placeholders(model: nn.Module, config: FactorEmbedConfig) -> list[str]:
    """Register ``<name>_q`` / ``<name>_scale`` Parameters for transformers to load into; returns the regexes of
    the float factors' keys, which the checkpoint does not hold."""
    missing = []
    skipping = {id(layer) for layer in _band_skipping_layers(model, config).values()}
    for key, (layer, name) in _owned(model, config).items():
        rows, cols = getattr(layer, name).shape
        if id(layer) in skipping and name in BAND_SKIPPING_TENSORS:
            rows -= layer.num_dense_rows
        bits, group = config.precision(name)
        q_shape, scale_shape = stored_shapes(rows, cols, bits, group)
        device = getattr(layer, name).device
        q = torch.zeros(q_shape, dtype=stored_dtype(bits), device=device)
        layer.register_parameter(name + Q, nn.Parameter(q, requires_grad=False))
        scale = torch.ones(scale_shape, dtype=torch.float16, device=device)
        layer.register_parameter(name + SCALE, nn.Parameter(scale, requires_grad=False))
        missing.append(rf"(^|\.){re.escape(key)}$")
    for layer in _band_skipping_layers(model, config).values():  # the codes load into a tensor of their rows
        codes = layer.tail_codes
        rows = codes.shape[0] - layer.num_dense_rows
        layer.tail_codes = nn.Parameter(codes.new_zeros(rows, codes.shape[1]), requires_grad=False)
    # a tied head's float factors are tied targets, restored by tying; declared too, for models loaded headless
    for module_name, layer in factorized_layers(model).items():
        present = [n for n in stored_tensors(config) if getattr(layer, n, None) is not None]
        missing += [rf"(^|\.){re.escape(module_name)}\.{n}$" for n in present]
    return missing


def _check_scales(scale: torch.Tensor, name: str) -> None:
    """Saved scales are finite and positive (:func:`.quantize.quantize` clamps them); anything else is damage."""
    if scale.dtype == torch.float16:
        # as int16, a positive finite half is 0 < bits < 0x7C00 (+inf); one integer pass, where float16
        # comparisons on CPU convert every element
        bits = scale.view(torch.int16)
        valid = bool(((bits > 0) & (bits < 0x7C00)).all())
    else:
        valid = bool((torch.isfinite(scale) & (scale > 0)).all())
    if not valid:
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
            if values.shape[0] != target.shape[0]:  # a band-skipping tail's rows
                values = _with_band_rows(layer, values)
            if target.device.type == "meta":
                setattr(layer, name, nn.Parameter(values.to(q.device), requires_grad=target.requires_grad))
            else:
                target.data = values.to(target.device)
    for name, layer in _band_skipping_layers(model, config).items():
        if layer.tail_codes.shape[0] != layer.weight.shape[0]:
            layer.tail_codes.data = _with_band_rows(layer, layer.tail_codes.data, f"{name}.tail_codes")
    retie(model)


def _with_band_rows(layer: FactorizedLayer, rows: torch.Tensor, name: str = "") -> torch.Tensor:
    """A band-skipping tail's stored ``rows`` (one per token outside the band) as a tensor of every token's, the
    band's rows zero."""
    outside = outside_band_mask(layer).to(rows.device)
    count = int(outside.sum())
    if rows.shape[0] != count:
        raise CheckpointError(
            f"{name or 'the tail'} holds {rows.shape[0]} rows but the band leaves {count} tokens outside it: "
            "an edited or damaged checkpoint; save the model again"
        )
    # Rows copied as int64 words where they divide into them (Gemma-3's 128 code bytes: 16 words): the copy's
    # cost is per element, 19 -> 10 ms for the codes; a mask, not index_copy with the ids: a third less time
    words = rows.dim() == 2 and rows.is_contiguous() and rows.shape[1] * rows.element_size() % 8 == 0
    packed = rows.view(torch.int64) if words else rows
    full = packed.new_zeros(layer.weight.shape[0], *packed.shape[1:])
    full[outside] = packed
    return full.view(rows.dtype) if words else full
