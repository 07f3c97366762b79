"""What ``compress`` and ``hf-factor-embed eval`` measure on a text: perplexity for a causal LM, the agreement of
sentence embeddings for an encoder; and a text's token ids as the model reads them."""

from __future__ import annotations

import torch

from ..calibration.model_text import bos_prefix
from ..errors import FactorEmbedError
from ..models.load import is_causal_lm


def token_ids(text: str | torch.Tensor, tokenizer, what: str) -> torch.Tensor:
    """The token ids of ``text`` (given ids as they are, flattened); ``what`` names the text in errors."""
    if isinstance(text, torch.Tensor):
        return text.reshape(-1).long()
    if tokenizer is None:
        raise FactorEmbedError(f"the model folder has no tokenizer, so {what} text cannot be read; add one")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise FactorEmbedError(f"the {what} text is empty; give a file with text in it")
    return ids


def eval_ids(text, tokenizer, eval_tokens: int, model):
    """Token ids of an evaluation text (its first ``eval_tokens``) for causal LMs; encoders read sentences."""
    if not is_causal_lm(model) or isinstance(text, torch.Tensor):
        return text
    return token_ids(text[: 16 * eval_tokens], tokenizer, "evaluation")[:eval_tokens]


def evaluate_text(model, tokenizer, text: str | torch.Tensor, eval_tokens: int, observe=None) -> dict:
    """For a causal LM its perplexity (with the tokens and window used), for an encoder its sentence embeddings
    (compared by :func:`compare_to_dense`). ``observe``: sees the perplexity pass's logits (a
    :class:`.fidelity.FidelityMeter`)."""
    from .perplexity import perplexity, sentence_embeddings, sentences_of

    if is_causal_lm(model):
        ids = token_ids(text, tokenizer, "evaluation")[:eval_tokens]
        window = min(512, ids.numel())
        if window < 16:
            raise FactorEmbedError("the evaluation text is too short; give at least a few hundred tokens")
        bos_id = bos_prefix(tokenizer)
        ppl = perplexity(model, ids, window=window, progress=True, bos_id=bos_id, observe=observe)
        return {"perplexity": ppl, "tokens": int(ids.numel()), "window": window, "bos_id": bos_id}
    sentences = sentences_of(text)
    if not sentences:
        raise FactorEmbedError("the evaluation text has no lines of 20 characters or more; give real sentences")
    return {"embeddings": sentence_embeddings(model, tokenizer, sentences)}


def fidelity_figures(fidelity) -> dict:
    """A :class:`.fidelity.Fidelity` as compression.json records it beside the perplexity ratio ({} for none)."""
    if fidelity is None:
        return {}
    return {
        "kld": round(fidelity.mean_kld, 5),
        "kld_p99": round(fidelity.p99_kld, 4),
        "same_top": round(fidelity.same_top, 4),
    }


def compare_to_dense(dense: dict, factorized: dict) -> dict:
    """A measured text's figures beside dense's: the perplexity ratio, or the sentence embeddings' agreement."""
    from .perplexity import cosine_agreement

    if "perplexity" in dense:
        d, f = dense["perplexity"], factorized["perplexity"]
        out = {"metric": "perplexity", "dense": round(d, 3), "factorized": round(f, 3), "ratio": round(f / d, 4)}
        return out | fidelity_figures(factorized.get("fidelity"))
    return {
        "metric": "cosine agreement with the dense model's sentence embeddings",
        "dense": 1.0,
        "factorized": round(cosine_agreement(dense["embeddings"], factorized["embeddings"]), 4),
        "sentences": int(dense["embeddings"].shape[0]),
    }
