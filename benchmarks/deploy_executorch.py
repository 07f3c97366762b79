"""The ExecuTorch rows of ``benchmarks/deploy.py --runtime executorch``: each ``.pte`` a user would ship instead.

- ``fp32``: the dense model as trained (``export_executorch``, XNNPACK-lowered, as the product lowers its own);
- ``int8`` / ``int4``: the dense model quantized as ExecuTorch's LLM export does it for XNNPACK
  (``executorch.extension.llm.export.quantize.quantize_model_``): every linear, the head included, ``8da8w`` /
  ``8da4w`` (int8 dynamic activations, int8 per-channel / int4 group-32 weights). The embedding table stays fp32:
  ExecuTorch's runtime has no quantized embedding kernel for XNNPACK (its Python runtime registers only
  ``aten::embedding``; its own TTS export script disables embedding quantization for XNNPACK, saying so), so a
  torchao-quantized table fails to lower ("Missing out variants: torchao::dequantize_affine");
- ``body-int8`` / ``body-int4``: only the body's linears so (the embedding and head stay fp32): the same body as
  ours, with a dense embedding;
- ``ours-*`` / ``shortlist-*``: ``hf-factor-embed export CKPT --format executorch --body ... [--head shortlist]``.

A ``.pte`` takes one token and its position a call and keeps its cache inside (:class:`ExecuTorchSteps` gives it
the ONNX decoder's ``step`` / ``greedy`` for the shared measurements): its prefill is token by token, as
ExecuTorch's LLM runner feeds a program exported this way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ExecuTorchSteps:
    """A ``.pte`` decoder with :class:`~hf_factor_embed.export.runtime.OnnxDecoder`'s interface: the "cache" is the
    next position (the program's own static cache is overwritten from position 0 by each new sequence)."""

    def __init__(self, path: Path) -> None:
        from hf_factor_embed.export.executorch import ExecuTorchDecoder

        self.decoder = ExecuTorchDecoder(path)

    def empty_cache(self) -> int:
        return 0

    def step(self, ids: np.ndarray, position: int) -> tuple[np.ndarray, int]:
        """The logits (1, V) after feeding ``ids`` (1, n) from ``position``, one token a call; the next position."""
        for token in ids[0]:
            logits = self.decoder.method.execute([torch.tensor([[int(token)]]), torch.tensor([position])])[0]
            position += 1
        return logits[:, -1].numpy(), position

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        return self.decoder.greedy(prompt_ids, new_tokens)


def executorch_speed(path: Path, prompt: np.ndarray) -> tuple[dict, ExecuTorchSteps]:
    """As ``export.decoder_speed`` measures an ONNX file: load, prefill of ``prompt`` (1, n) and 32 greedy tokens
    after it, best of 3 each."""
    from export import decoder_speed

    return decoder_speed(path, prompt, ExecuTorchSteps)


def write_programs(checkpoint: Path, dense_name: str, rows: list[str], folder: Path) -> dict[str, Path]:
    """Each row's ``.pte`` under ``folder/<row>/``; a file already there (``--keep``) is measured as it is."""
    from hf_factor_embed.export import export
    from hf_factor_embed.export.executorch import PROGRAM_FILE, export_executorch
    from hf_factor_embed.models.load import load_model

    files = {row: folder / row / PROGRAM_FILE for row in rows}
    for row in rows:
        if files[row].is_file():
            continue
        _fresh(folder / row)
        kind, _, body = row.rpartition("-")
        if kind in ("ours", "shortlist"):
            head = "shortlist" if kind == "shortlist" else "full"
            export(checkpoint, folder / row, format="executorch", body=body, head=head)
            continue
        dense, _ = load_model(dense_name)
        if body != "fp32":
            quantize_dense(dense, body, whole=kind != "body")
        (folder / row).mkdir()
        export_executorch(dense, folder / row)
        del dense
    return files


def quantize_dense(model, body: str, whole: bool) -> None:
    """The dense model's body linears as ``--body`` quantizes ours; with ``whole``, its head too (an untied copy of
    a tied table: the embedding stays fp32, see above), as a user of ExecuTorch's LLM export ships it."""
    from executorch.extension.llm.export.quantize import quantize_model_

    from hf_factor_embed.export.body import EXECUTORCH_CONFIG, _quiet

    # the body alone: the inner model holds every linear but the head (the CausalLM wrapper holds lm_head)
    target = model if whole else model.get_decoder()
    with _quiet():
        quantize_model_(target, qlinear_config=EXECUTORCH_CONFIG[body], skip_incompatible_shapes=True)


def _fresh(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
