"""Load any model the command line is pointed at (a folder, a Hub name, a GGUF inside either) with the class its
config names, and its tokenizer: the one place that decides how a user's MODEL argument becomes a model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FactorEmbedError
from .names import check_gguf_file, check_model_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(name: str | Path, *, gguf_file: str | None = None, dtype: str = "float32"):
    """(model, tokenizer or None), the model in ``dtype`` and in eval mode. ``name``: a folder, a Hub name, or
    ``bundled:<name>`` (:mod:`hf_factor_embed.models.bundled`).

    The class is the config's first ``architectures`` entry (``LlamaForCausalLM``, ``BertModel``, ...), as
    pipelines do, so heads are kept; without one, ``AutoModel``. A GGUF file is dequantized by transformers.
    """
    from transformers import AutoConfig, AutoTokenizer

    from .bundled import resolve

    if dtype not in DTYPES:
        raise FactorEmbedError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    check_model_name(name)
    check_gguf_file(name, gguf_file)
    name = resolve(name)
    if Path(name).exists() and not Path(name, "config.json").is_file() and gguf_file is None:
        raise FactorEmbedError(f"{name} is not a saved model folder (no config.json); give a model folder")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(name, **kwargs)
    model = _model_class(config).from_pretrained(name, dtype=DTYPES[dtype], **kwargs).eval()
    if gguf_file and getattr(model.config, "quantization_config", None) is not None:
        # The GGUF was dequantized on load: the model in memory is a plain float model, saved as one.
        del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError):  # a folder without tokenizer files: calibration needs token ids then
        tokenizer = None
    return model, tokenizer


def _model_class(config):
    """The config's first ``architectures`` entry; without one (GGUF files name none), the causal-LM class when
    the model type has one, else ``AutoModel``."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    named = getattr(transformers, architectures[0], None) if architectures else None
    if named is not None:
        return named
    return AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModel


def is_causal_lm(model) -> bool:
    return type(model).__name__.endswith("ForCausalLM") or hasattr(model, "generate") and model.can_generate()
