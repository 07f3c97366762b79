"""``compress``: a model name in, a factorized checkpoint folder out, with what it took and what it cost.

The command line's ``compress`` and the main job (``recipes/compress_gemma3.py``) are thin calls of
:func:`compress`, which only orchestrates named steps: the request checked (:mod:`.request`), the model loaded
(:mod:`hf_factor_embed.models.load`), the dense baseline measured (:mod:`hf_factor_embed.measure.baseline`), the
model factorized by the plan or at the given size (:mod:`.planning`), the record assembled (:mod:`.result`) and
the folder written and checked (:mod:`.save`). The folder holds the checkpoint (factors only), the tokenizer,
``compression.json`` and a model card (``README.md``) with plots when matplotlib is installed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import AlreadyPatchedError
from ..folders import staged_folder
from ..measure.baseline import measure_dense
from ..models.load import load_model
from ..options import Settings
from ..quantizer.structure import factorized_layers
from .planning import calibration_ids, factorize
from .request import prepare, sample_generated
from .result import build_result
from .save import COMPRESSION_FILE, save_folder
from .summary import summary_table

__all__ = ["COMPRESSION_FILE", "compress", "summary_table"]


def compress(
    model_name: str | Path,
    out: str | Path,
    *,
    calibration: str | torch.Tensor | Mapping[str, str | torch.Tensor] | None = None,
    eval_texts: Mapping[str, str | torch.Tensor] | None = None,
    method: str | None = None,
    gguf_file: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    plots: bool = True,
    command: str | None = None,
    base_model_id: str | None = None,
    license: str | None = None,
    **settings,
) -> dict:
    """Factorize ``model_name`` and write the folder ``out``; returns what ``compression.json`` holds.

    ``settings``: the fields of :mod:`hf_factor_embed.options` by name, each with its default, check and help
    there: what is served and measured (``serve``, ``measure``, ``held_back``, ``calibration_tokens``,
    ``eval_tokens``, ``peers``), the size (one of ``rank``, ``budget``, ``target``, ``max_bytes``; with ``serve``
    and none, the plan at :data:`~hf_factor_embed.options.DEFAULT_MAX_BYTES`), the storage (``bits``,
    ``group_size``, ``band_bits``; 4 bits under the plan) and the banded method's shape (``band_share``, ``tail``,
    ``tail_sub_dim``). ``max_bytes`` or a ``target`` with ``serve`` runs the plan (:mod:`.plan`): a candidate per
    tail format measured on the served sources' held-back parts and on the sources not served beside trimming.

    ``calibration``: text or token ids instead of ``serve``. ``eval_texts``: name -> text (or token ids), each
    measured before and after (perplexity for causal LMs; for encoders, the cosine agreement of mean-pooled
    sentence embeddings with the dense model's). ``base_model_id``: the Hub name the card links to when
    ``model_name`` is a local folder; ``license``: the card's license. The saved folder is reloaded and checked
    (identical logits, tying). The folder is written whole or not at all (:func:`~hf_factor_embed.folders.
    staged_folder`): staged beside ``out`` and renamed into place, an existing ``out`` replaced only then.
    """
    request = prepare(
        model_name,
        out,
        Settings.build(**settings),
        calibration=calibration,
        eval_texts=eval_texts,
        method=method,
        gguf_file=gguf_file,
        dtype=dtype,
        overwrite=overwrite,
    )
    written = f"compress {model_name} --out {out}" if command is None else command
    with staged_folder(request.out, overwrite=overwrite, inputs=[model_name], command=written) as staging:
        model, tokenizer = load_model(model_name, gguf_file=gguf_file, dtype=dtype)
        if factorized_layers(model):
            raise AlreadyPatchedError(f"{model_name} is already factorized; give the dense model")
        sources = request.settings.sources
        sample_generated(request, model, tokenizer)  # the model's own text, where a source asks for it
        calibration = calibration_ids(request.calibration, tokenizer, sources.calibration_tokens)
        dense = measure_dense(
            model, tokenizer, request.eval_texts, eval_tokens=sources.eval_tokens, peers=sources.peers, plots=plots
        )
        started = time.perf_counter()
        model, plan = factorize(model, tokenizer, request, calibration, dense)
        meta = dict(command=command, base_model_id=base_model_id, license=license, calibration=calibration)
        seconds = time.perf_counter() - started
        result = build_result(model, tokenizer, request, dense, plan, patch_seconds=seconds, **meta)
        save_folder(model, tokenizer, staging, result, dense.spectrum)
    return result
