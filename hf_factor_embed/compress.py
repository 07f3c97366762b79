"""``compress``: a model name in, a factorized checkpoint folder out, with what it took and what it cost.

The command line's ``compress`` and the main job (``recipes/compress_smollm2.py``) are thin calls of
:func:`compress`. The folder holds the checkpoint (factors only), the tokenizer, ``compression.json`` (the patch
report, sizes, the evaluation if text was given, the command) and a model card (``README.md``) with plots when
matplotlib is installed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .errors import AlreadyPatchedError, FactorEmbedError
from .folders import check_output_dir, folder_bytes
from .loading import is_causal_lm, load_model
from .patch import patch_model
from .structure import factorized_layers

logger = logging.getLogger(__name__)

COMPRESSION_FILE = "compression.json"


def read_texts(files: Sequence[str | Path] | None = None, dataset: str | None = None) -> str | None:
    """The text of plain-text files, or of a ``datasets`` name's ``text`` column; None when neither is given."""
    if files:
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            raise FactorEmbedError(f"text file not found: {missing[0]}; pass existing plain-text files")
        return "\n\n".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files)
    if dataset:
        from .recovery.data import load_text

        return "\n\n".join(t for t in load_text(dataset=dataset)["text"] if t)
    return None


def compress(
    model_name: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    budget: float | None = None,
    target: float | None = None,
    method: str | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    band_bits: int | None = None,
    calibration: str | torch.Tensor | None = None,
    calibration_tokens: int = 32768,
    eval_texts: Mapping[str, str | torch.Tensor] | None = None,
    eval_tokens: int = 4096,
    gguf_file: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    command: str | None = None,
    plots: bool = True,
    base_model_id: str | None = None,
    license: str | None = None,
) -> dict:
    """Factorize ``model_name`` and write the folder ``out``; returns what ``compression.json`` holds.

    ``calibration``: text or token ids (its first ``calibration_tokens`` tokens). ``eval_texts``: name -> text
    (or token ids), each measured before and after (perplexity for causal LMs; for encoders, the cosine agreement
    of mean-pooled sentence embeddings with the dense model's); the first ``eval_tokens`` tokens are used. Keep
    them apart from the calibration text, and give one of another kind too: quality on the calibration text's
    own kind says little about the rest. The saved folder is reloaded and checked (identical logits, tying).
    ``base_model_id``: the Hub name the card links to when ``model_name`` is a local folder; ``license``: the
    card's license (the base model's).
    """
    if sum(x is not None for x in (rank, budget, target)) != 1:
        raise FactorEmbedError("give exactly one of --rank, --budget or --target")
    out = check_output_dir(out, overwrite=overwrite)
    model, tokenizer = load_model(model_name, gguf_file=gguf_file, dtype=dtype)
    if factorized_layers(model):
        raise AlreadyPatchedError(f"{model_name} is already factorized; give the dense model")
    if calibration is not None:
        calibration = _token_ids(calibration, tokenizer, "calibration")[:calibration_tokens]
    eval_texts = dict(eval_texts or {})
    dense_eval = {name: evaluate_text(model, tokenizer, text, eval_tokens) for name, text in eval_texts.items()}
    spectrum = _spectrum(model) if plots else None
    bytes_dense = _param_bytes(model)

    started = time.perf_counter()
    size = {"rank": rank} if rank is not None else {"budget": budget} if budget is not None else {"target": target}
    patch_model(
        model, **size, method=method, calibration=calibration, bits=bits, group_size=group_size, band_bits=band_bits
    )
    seconds = time.perf_counter() - started
    report = model.factor_embed_report
    result = {
        "base_model": str(model_name),
        "base_model_id": base_model_id,
        "license": license,
        "gguf_file": gguf_file,
        "dtype": dtype,
        "architecture": type(model).__name__,
        "requested": size,
        "bits": bits,
        "group_size": model.config.quantization_config.group_size,
        "band_bits": model.config.quantization_config.band_bits,
        "report": report.as_dict(),
        "calibration_tokens": 0 if calibration is None else int(calibration.numel()),
        "param_bytes_dense": bytes_dense,
        "param_bytes_factorized": _param_bytes(model),
        "patch_seconds": round(seconds, 2),
        "command": command,
    }
    result["evaluation"] = {
        name: compare_to_dense(dense_eval[name], evaluate_text(model, tokenizer, text, eval_tokens))
        for name, text in eval_texts.items()
    }
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    result["checkpoint_bytes"] = folder_bytes(out)
    result["reload"] = _check_reload(model, out)
    if spectrum is not None:
        result["plots"] = _plots(out, spectrum, report)
    (out / COMPRESSION_FILE).write_text(json.dumps(result, indent=2, default=str))
    from .hub.card import write_card

    write_card(out, result)
    return result


def _token_ids(text: str | torch.Tensor, tokenizer, what: str) -> torch.Tensor:
    if isinstance(text, torch.Tensor):
        return text.reshape(-1).long()
    if tokenizer is None:
        raise FactorEmbedError(f"the model folder has no tokenizer, so {what} text cannot be read; add one")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise FactorEmbedError(f"the {what} text is empty; give a file with text in it")
    return ids


def evaluate_text(model, tokenizer, text: str | torch.Tensor, eval_tokens: int) -> dict:
    """What ``compress`` and ``hf-factor-embed eval`` measure on a text: for a causal LM its perplexity (with the
    tokens and window used), for an encoder its sentence embeddings (compared by :func:`compare_to_dense`)."""
    from .evaluation import perplexity, sentence_embeddings, sentences_of

    if is_causal_lm(model):
        ids = _token_ids(text, tokenizer, "evaluation")[:eval_tokens]
        window = min(512, ids.numel())
        if window < 16:
            raise FactorEmbedError("the evaluation text is too short; give at least a few hundred tokens")
        ppl = perplexity(model, ids, window=window, progress=True)
        return {"perplexity": ppl, "tokens": int(ids.numel()), "window": window}
    sentences = sentences_of(text)
    if not sentences:
        raise FactorEmbedError("the evaluation text has no lines of 20 characters or more; give real sentences")
    return {"embeddings": sentence_embeddings(model, tokenizer, sentences)}


def compare_to_dense(dense: dict, factorized: dict) -> dict:
    from .evaluation import cosine_agreement

    if "perplexity" in dense:
        d, f = dense["perplexity"], factorized["perplexity"]
        return {"metric": "perplexity", "dense": round(d, 3), "factorized": round(f, 3), "ratio": round(f / d, 4)}
    return {
        "metric": "cosine agreement with the dense model's sentence embeddings",
        "dense": 1.0,
        "factorized": round(cosine_agreement(dense["embeddings"], factorized["embeddings"]), 4),
        "sentences": int(dense["embeddings"].shape[0]),
    }


@torch.no_grad()
def _check_reload(model, out: Path) -> dict:
    """Reload ``out`` the way users will and compare: the checkpoint must give the same outputs and tying."""
    reloaded = type(model).from_pretrained(out, dtype=next(model.parameters()).dtype).eval()
    probe = torch.arange(1, 65).remainder(model.get_input_embeddings().weight.shape[0])[None]
    first, second = model(input_ids=probe)[0], reloaded(input_ids=probe)[0]
    head, embedding = reloaded.get_output_embeddings(), reloaded.get_input_embeddings()
    return {
        "identical": bool(torch.equal(first, second)),
        "tied": head is not None and getattr(head, "weight", None) is getattr(embedding, "weight", 0),
        "factorized_layers": len(factorized_layers(reloaded)),
    }


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _spectrum(model) -> dict[str, list[float]]:
    """Singular values of each dense embedding matrix (a tied head once), before it is replaced."""
    from .analysis import embedding_weights, singular_values

    return {role: singular_values(weight).tolist() for role, weight in embedding_weights(model).items()}


def _plots(out: Path, spectrum: dict, report) -> list[str]:
    try:
        from .plots import spectrum_plot
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install 'hf-factor-embed[plots]')")
        return []
    ranks = {m.role: m.rank for m in report.modules}
    path = out / "spectrum.png"
    spectrum_plot(spectrum, path, ranks=ranks)
    return [path.name]
