"""Factor tensors that a load did not claim: a factorized checkpoint whose ``config.json`` lost its
``quantization_config`` (or names an unknown ``quant_method``) loads as a dense model, and transformers would
initialise the embedding at random and only warn. With this package installed it fails loudly instead.

transformers has no hook for "a load finished" outside a quantizer, so :func:`install` wraps
``PreTrainedModel._finalize_model_loading`` (where transformers itself reports unexpected keys); where a
transformers version lacks it, nothing is wrapped and the old behaviour stays.
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
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__.get("_finalize_model_loading")
    finalize = original.__func__ if isinstance(original, staticmethod) else original
    if original is None or getattr(finalize, "_hf_factor_embed", False):
        return

    @functools.wraps(finalize)
    def finalize_model_loading(model, load_config, loading_info):
        factors = unclaimed_factors(getattr(loading_info, "unexpected_keys", ()) or ())
        if factors and not _claimed(model):
            raise CheckpointError(
                f"this checkpoint holds hf_factor_embed factors ({', '.join(factors[:3])}, ...) but its config.json "
                "does not say so (quantization_config missing, or its quant_method is not hf_factor_embed): the "
                "embedding would load at random. Restore config.json's quantization_config from the folder's "
                "source, or save the model again"
            )
        return finalize(model, load_config, loading_info)

    finalize_model_loading._hf_factor_embed = True
    PreTrainedModel._finalize_model_loading = staticmethod(finalize_model_loading)


def _claimed(model) -> bool:
    """Whether this package's quantizer loaded the model (then its factors are expected, never unexpected)."""
    from .hf_quantizer import FactorEmbedHfQuantizer

    return isinstance(getattr(model, "hf_quantizer", None), FactorEmbedHfQuantizer)
