"""A factorized checkpoint where small models are deployed: an ONNX file (ONNX Runtime) or an
ExecuTorch program, its integers kept, checked against transformers before it is called done.

    from hf_factor_embed.export import export
    report = export("out/gemma3-en", "out/gemma3-en-onnx")        # model.onnx, tokenizer, configs, export.json

Decoders (``*ForCausalLM``) export with a key/value cache (:mod:`.decoder`) and are checked by greedy decoding in
ONNX Runtime, token for token against ``generate``; encoders (BERT) export their hidden states and are checked by
the largest difference from transformers'. Needs ``pip install "hf-factor-embed[export]"``; importing this module
does not import torch's exporter or ONNX Runtime.
"""

from __future__ import annotations

from .api import FORMATS, ExportReport, check_export, check_format, export

__all__ = ["FORMATS", "ExportReport", "check_export", "check_format", "export"]
