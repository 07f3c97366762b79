"""What trains during recovery: the factors only, the factors and LoRA adapters (through PEFT), or everything."""

from __future__ import annotations

from torch import nn

from ..errors import FactorEmbedError
from ..layers.factorized import FactorizedLayer
from ..quantizer.structure import factorized_layers

TRAIN_MODES = ("factors", "lora", "all")
#: The tensors of a factorized layer that train (``dense_index`` is an integer map, never trained).
FACTOR_TENSORS = ("weight", "basis", "dense_rows", "codebooks", "tail_rotation")


def factor_parameters(model: nn.Module, names: tuple[str, ...] = FACTOR_TENSORS) -> list[nn.Parameter]:
    """Every trainable factor Parameter once (a tied head shares its embedding's objects); ``names``: which of
    :data:`FACTOR_TENSORS` (e.g. ``("codebooks",)``: the product-coded tail's centroids alone)."""
    unknown = sorted(set(names) - set(FACTOR_TENSORS))
    if unknown or not names:
        raise FactorEmbedError(f"tensors={names!r}: name one or more of {FACTOR_TENSORS} (unknown: {unknown})")
    seen: dict[int, nn.Parameter] = {}
    for layer in factorized_layers(model).values():
        for name in names:
            param = getattr(layer, name, None)
            if param is not None:
                seen.setdefault(id(param), param)
    return list(seen.values())


def prepare_student(model: nn.Module, train: str = "factors", *, lora_rank: int = 16, lora_alpha: int = 32):
    """Set ``requires_grad`` for recovery and return the model to train (a ``PeftModel`` for ``"lora"``).

    ``"lora"`` wraps every linear layer of the transformer blocks in LoRA adapters (PEFT's ``all-linear``; the
    factorized head is not an ``nn.Linear`` and stays out) and trains the factors beside them; merge with
    :func:`finish_student` before saving.
    """
    if train not in TRAIN_MODES:
        raise FactorEmbedError(f"train={train!r} is not one of {TRAIN_MODES}")
    if not any(isinstance(m, FactorizedLayer) for m in model.modules()):
        raise FactorEmbedError("the student has no factorized layers; patch it first (hf_factor_embed.patch_model)")
    if train == "all":
        for param in model.parameters():  # the band's index is an integer Parameter: it never trains
            param.requires_grad_(param.is_floating_point())
        return model
    if train == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules="all-linear"))
    else:
        model.requires_grad_(False)
    for param in factor_parameters(model):
        param.requires_grad_(True)
    return model


def make_shardable(model: nn.Module) -> nn.Module:
    """The factors stored row-major, so that FSDP2 (``fully_shard``, Accelerate's FSDP) can shard them; call before
    sharding. Tied layers share their Parameters, so the tie survives."""
    for layer in factorized_layers(model).values():
        layer.use_row_major_layout()
    return model


def finish_student(model: nn.Module) -> nn.Module:
    """The plain transformers model to save: LoRA adapters merged into their layers (the factors stay factors)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model
