"""The dense model measured before it is factorized: every figure of the report is a ratio to these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..calibration.model_text import bos_prefix
from ..errors import FactorEmbedError
from ..models.load import is_causal_lm
from .continuations import greedy_of_prompts, text_prompts
from .fidelity import FidelityMeter, head_copy
from .texts import eval_ids, evaluate_text, fidelity_figures


@dataclass
class DenseBaseline:
    """What the dense model gives on the measured texts, and what the report needs of it before it is replaced."""

    eval_ids: dict  # text name -> its token ids (causal LMs) or its text (encoders)
    evaluation: dict  # text name -> evaluate_text's figures
    peers: dict | None  # peer name -> embedding bytes and perplexity ratio per text (quantizing the embedding)
    prompts: dict[str, str]  # prompt -> the text it opens
    continuations: list[list[int]]  # dense's greedy continuation of each prompt
    spectrum: dict | None  # role -> singular values of the dense embedding (for the card's plot)
    param_bytes: int
    bos_id: int | None
    references: dict = field(default_factory=dict)  # text name -> dense's next-token reference (causal LMs)

    def evaluate(self, model, tokenizer, name: str, eval_tokens: int) -> dict:
        """``model`` on the measured text ``name``, on dense's windows: :func:`.texts.evaluate_text`'s figures and
        ``fidelity`` against dense's reference (None where none was kept: encoders)."""
        reference = self.references.get(name)
        meter = FidelityMeter(reference) if reference is not None else None
        figures = evaluate_text(model, tokenizer, self.eval_ids[name], eval_tokens, observe=meter)
        return figures | {"fidelity": meter and meter.fidelity()}


def measure_dense(
    model, tokenizer, texts: Mapping, *, eval_tokens: int, peers: bool | Sequence[str], plots: bool
) -> DenseBaseline:
    """Measure ``texts`` (name -> text or token ids) on the dense ``model``, with the quantization ``peers`` and
    the greedy continuations a user reads."""
    ids = {name: eval_ids(text, tokenizer, eval_tokens, model) for name, text in texts.items()}
    causal = is_causal_lm(model)
    head = head_copy(model) if causal else None  # one copy of dense's head serves every text's reference
    meters = {name: FidelityMeter.recording(model, head) for name in ids} if causal else {}
    evaluation = {
        name: evaluate_text(model, tokenizer, text, eval_tokens, observe=meters.get(name)) for name, text in ids.items()
    }
    references = {name: meter.recorded() for name, meter in meters.items()}
    bos_id = bos_prefix(tokenizer)
    peer_results = measure_peers(model, ids, evaluation, peers, bos_id, references) if peers and causal else None
    prompts = text_prompts(ids, tokenizer) if causal and tokenizer is not None else {}
    return DenseBaseline(
        eval_ids=ids,
        evaluation=evaluation,
        peers=peer_results,
        prompts=prompts,
        continuations=greedy_of_prompts(model, tokenizer, prompts),
        spectrum=_spectrum(model) if plots else None,
        param_bytes=param_bytes(model),
        bos_id=bos_id,
        references=references,
    )


def measure_peers(
    model, eval_ids: dict, dense_eval: dict, names: bool | Sequence[str], bos_id=None, references=None
) -> dict:
    """Quantizing the dense embedding instead: bytes and perplexity ratio per text, measured on the same windows,
    with KL divergence and same-top against dense's ``references`` (text name -> :class:`.fidelity.ReferenceTop`)."""
    from .analysis import embedding_weights
    from .peers import quantization_peers

    shapes = [tuple(w.shape) for w in embedding_weights(model).values()]
    chosen = quantization_peers()
    if names is not True:
        unknown = set(names) - {p.name for p in chosen}
        if unknown:
            raise FactorEmbedError(f"unknown peers {sorted(unknown)}; known: {[p.name for p in chosen]}")
        chosen = [p for p in chosen if p.name in names]
    references = references or {}
    results = {}
    for peer in chosen:
        figures: dict[str, dict] = {"ratio": {}, "kld": {}, "same_top": {}}
        for name, ids in eval_ids.items():
            window = dense_eval[name]["window"]
            meter = FidelityMeter(references[name]) if name in references else None
            ppl = peer.perplexity(model, ids, window, bos_id=bos_id, observe=meter)
            figures["ratio"][name] = round(ppl / dense_eval[name]["perplexity"], 4)
            for key, value in fidelity_figures(meter and meter.fidelity()).items():
                if key != "kld_p99":
                    figures[key][name] = value
        results[peer.name] = {"embedding_bytes": sum(peer.stored_bytes(*s) for s in shapes)}
        results[peer.name] |= {key: values for key, values in figures.items() if values}
    return results


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _spectrum(model) -> dict[str, list[float]]:
    """Singular values of each dense embedding matrix (a tied head once), before it is replaced."""
    from .analysis import embedding_weights, singular_values

    with torch.no_grad():
        return {role: singular_values(weight).tolist() for role, weight in embedding_weights(model).items()}
