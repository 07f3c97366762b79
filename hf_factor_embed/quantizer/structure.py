"""Swapping factorized layers into a model and back, shared by ``patch_model`` and the load path.

Both paths end in the same state: factorized layers in place, a tied head sharing the embedding's Parameters,
the tied-weight key maps extended to the new factor names, and the dense originals kept aside (not as
submodules, so never saved) for :func:`hf_factor_embed.densify`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import EmbeddingAdapter
from ..config import INPUT, OUTPUT, FactorEmbedConfig
from ..errors import UnsupportedModelError
from ..layers.factorized import FactorizedEmbedding, FactorizedLayer, FactorizedLMHead
from ..layers.layout import LayerLayout
from ..lazy import pretrained_model_class as _pretrained_model_class

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

#: Attribute of a factorized layer holding the replaced dense module on the meta device.
DENSE_SKELETON = "_dense_skeleton"


def dense_shape(module: nn.Module) -> tuple[int, int]:
    """(V, d) of an embedding table or an output projection."""
    weight = module.weight
    if weight.dim() != 2:
        raise UnsupportedModelError(f"{type(module).__name__} has a {weight.dim()}-d weight, not a V x d matrix")
    return tuple(weight.shape)  # nn.Embedding: (V, d); nn.Linear head: (out=V, in=d)


def embed_scale_of(module: nn.Module) -> float | None:
    """The scale a ScaledWordEmbedding-style class multiplies its output by, as a float (None: no scale)."""
    scale = getattr(module, "embed_scale", None)
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        if scale.is_meta:
            raise UnsupportedModelError(f"{type(module).__name__}.embed_scale is on the meta device; load real weights")
        return float(scale.item())
    return float(scale)


def install_layers(
    model: PreTrainedModel, adapter: EmbeddingAdapter, config: FactorEmbedConfig
) -> dict[str, FactorizedLayer]:
    """Replace every module named in ``config.modules`` by an (uninitialised) factorized layer, tie, re-key."""
    layers: dict[str, FactorizedLayer] = {}
    # The input side first, so a tied head can take its Parameters.
    for role in sorted(config.modules, key=lambda r: r != INPUT):
        spec = config.modules[role]
        original = adapter.get(model, role)
        if original is None and role != INPUT:
            continue  # e.g. AutoModel (no head) loading a *ForCausalLM checkpoint: the head's keys go unused
        if original is None:
            raise UnsupportedModelError(
                f"the factorized checkpoint has a {role!r} module but {type(model).__name__} has none"
            )
        if isinstance(original, FactorizedLayer):
            raise UnsupportedModelError(f"the {role!r} module is factorized already")
        v, d = dense_shape(original)
        if (v, d) != (spec["num_embeddings"], spec["embedding_dim"]):
            raise UnsupportedModelError(
                f"the {role!r} module of {type(model).__name__} is {v} x {d} but the factorized config says "
                f"{spec['num_embeddings']} x {spec['embedding_dim']}"
            )
        layout = LayerLayout.from_config(spec)  # the band's size, the tail's codes
        where = {"device": original.weight.device, "dtype": original.weight.dtype}
        if role == OUTPUT:
            bias = getattr(original, "bias", None) is not None
            layer: FactorizedLayer = FactorizedLMHead.from_layout(layout, bias=bias, **where)
            if config.tied:
                layer.tie_to(layers[INPUT])
        else:
            padding = getattr(original, "padding_idx", None)
            scale = spec.get("embed_scale")
            layer = FactorizedEmbedding.from_layout(layout, padding_idx=padding, embed_scale=scale, **where)
        object.__setattr__(layer, DENSE_SKELETON, meta_copy(original))
        adapter.set(model, role, layer)
        layers[role] = layer
    retie(model)
    return layers


def retie(model: PreTrainedModel) -> None:
    """Extend each tied-weight map with the other shared tensors of every tied factorized pair, recompute, tie.

    The map starts from the class attribute each time, so this is idempotent and undone by :func:`untie_keys`.
    """
    for _, sub in model.named_modules():
        if not isinstance(sub, _pretrained_model_class()):
            continue
        mapping = dict(type(sub)._tied_weights_keys or {})
        for target, source in list(mapping.items()):
            if not (target.endswith(".weight") and source.endswith(".weight")):
                continue
            try:
                t_mod, s_mod = sub.get_submodule(target[:-7]), sub.get_submodule(source[:-7])
            except AttributeError:
                continue  # a regex pattern, or a module this model (e.g. a base model) does not have
            if isinstance(t_mod, FactorizedLayer) and isinstance(s_mod, FactorizedLayer):
                for name in t_mod.shared_tensors:
                    if getattr(s_mod, name, None) is not None:
                        mapping[f"{target[:-7]}.{name}"] = f"{source[:-7]}.{name}"
        sub._tied_weights_keys = mapping
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    model.tie_weights(recompute_mapping=False)


def untie_keys(model: PreTrainedModel) -> None:
    """Back to the classes' own tied-weight maps."""
    for _, sub in model.named_modules():
        if isinstance(sub, _pretrained_model_class()) and "_tied_weights_keys" in vars(sub):
            del sub._tied_weights_keys
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every tensor on the meta device: its class and settings, none of its memory."""
    memo = {id(t): torch.empty_like(t, device="meta") for t in (*module.parameters(), *module.buffers())}
    memo.update({id(p): nn.Parameter(memo[id(p)], requires_grad=p.requires_grad) for p in module.parameters()})
    return copy.deepcopy(module, memo)


def factorized_layers(model: nn.Module) -> dict[str, FactorizedLayer]:
    """Qualified name -> layer, for every factorized layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FactorizedLayer)}
