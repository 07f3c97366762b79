"""Factor tensors that a load did not claim: a factorized checkpoint whose ``config.json`` lost its
``quantization_config`` (or names an unknown ``quant_method``) loads as a dense model, and transformers would
initialise the embedding at random and only warn. With this package installed it fails loudly instead.

transformers has no hook for "a load finished" outside a quantizer, so :func:`install` wraps
``PreTrainedModel._finalize_model_loading`` (where transformers itself reports unexpected keys); where a
transformers version lacks it, nothing is wrapped and the old behaviour stays. ``import hf_factor_embed`` stays
light: the wrap waits for ``transformers.modeling_utils``, which loads before any model does.
"""

from __future__ import annotations

import functools

from ..errors import CheckpointError

#: Tensor names only a factorized layer stores (the float factors' names, and the integer ones' ``_q`` / ``_scale``).
FACTOR_SUFFIXES = (
    ".basis",
    ".dense_rows",
    ".dense_index",
    ".tail_codes",
    ".codebooks",
    ".tail_rotation",
    ".weight_q",
    ".weight_scale",
    ".basis_q",
)


def unclaimed_factors(unexpected_keys) -> list[str]:
    return sorted(k for k in unexpected_keys if k.endswith(FACTOR_SUFFIXES))


def install() -> None:
    """Wrap the load's last step now, or as soon as ``transformers.modeling_utils`` is imported (the autoload
    module's one-shot import hook, shipped beside the package)."""
    from hf_factor_embed_autoload import TRIGGER, run_after_import

    run_after_import(TRIGGER, _wrap)


def _wrap() -> None:
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__.get("_finalize_model_loading")
    if original is None:
        return
    finalize = original.__func__ if isinstance(original, staticmethod) else original
    if getattr(finalize, "_hf_factor_embed", False):
        return

    @functools.wraps(finalize)
    def finalize_model_loading(model, load_config, loading_info):
        factors = unclaimed_factors(getattr(loading_info, "unexpected_keys", ()) or ())
        if factors and not _claimed(model, load_config):
            raise CheckpointError(
                f"this checkpoint holds hf_factor_embed factors ({', '.join(factors[:3])}, ...) but its config.json "
                "does not say so (quantization_config missing, or its quant_method is not hf_factor_embed): the "
                "embedding would load at random. Restore config.json's quantization_config from the folder's "
                "source, or save the model again"
            )
        return finalize(model, load_config, loading_info)

    finalize_model_loading._hf_factor_embed = True
    PreTrainedModel._finalize_model_loading = staticmethod(finalize_model_loading)


def _claimed(model, load_config) -> bool:
    """Whether this package's quantizer loads the model (its factors are then expected; a base model loading a
    checkpoint with a head leaves the head's factors unused, rightly)."""
    from ..config import FactorEmbedConfig
    from .hf_quantizer import FactorEmbedHfQuantizer

    quantizer = getattr(load_config, "hf_quantizer", None) or getattr(model, "hf_quantizer", None)
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    return isinstance(quantizer, FactorEmbedHfQuantizer) or isinstance(config, FactorEmbedConfig)
