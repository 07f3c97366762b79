"""Factorize the loaded dense model as a request asks: the plan (a budget or a quality target, candidates measured)
or ``patch_model`` at the size the user gave."""

from __future__ import annotations

from collections.abc import Mapping

from ..calibration.model_text import bos_prefix, special_token_ids
from ..errors import FactorEmbedError
from ..measure.baseline import DenseBaseline
from ..measure.texts import fidelity_figures, token_ids
from ..models.load import is_causal_lm
from .patch import patch_model
from .request import CompressRequest


def calibration_ids(calibration, tokenizer, calibration_tokens: int):
    """Named sources counted whole (the model reads ``calibration_tokens`` of each), or one text's first tokens."""
    if isinstance(calibration, Mapping):
        return {n: token_ids(t, tokenizer, "calibration") for n, t in calibration.items()}
    if calibration is not None:
        return token_ids(calibration, tokenizer, "calibration")[:calibration_tokens]
    return None


def factorize(model, tokenizer, request: CompressRequest, calibration, dense: DenseBaseline):
    """(the factorized model, the plan's record or None)."""
    storage, calibration_tokens = request.settings.storage, request.settings.sources.calibration_tokens
    if request.plan is not None:
        return plan_model(model, tokenizer, request, calibration, dense)
    patch_model(
        model,
        **request.size,
        method=request.method,
        calibration=calibration,
        tokenizer=tokenizer,
        model_tokens=calibration_tokens if isinstance(calibration, Mapping) else None,
        bits=request.bits,
        group_size=storage.group_size,
        band_bits=storage.band_bits,
    )
    return model, None


def plan_model(model, tokenizer, request: CompressRequest, calibration, dense: DenseBaseline):
    """The plan (:mod:`.plan`) on ``model``: statistics gathered once, a factorized copy per candidate measured on
    every evaluation text beside trimming at the same bytes; returns (the chosen model, the plan's record)."""
    from ..calibration.collect import collect_source_stats
    from ..factorize.banded import BandedMethod
    from ..measure.analysis import embedding_weights
    from ..measure.peers import TrimmedPeer
    from ..quantizer.sizes import embedding_bytes
    from .budget import budget_bytes
    from .plan import run_plan, run_target

    if not is_causal_lm(model):
        raise FactorEmbedError(
            "--max-bytes measures perplexity on the served text: causal language models only; "
            "give --rank for this model"
        )
    sources, storage = request.settings.sources, request.settings.storage
    fp32 = sum(w.numel() * 4 for w in embedding_weights(model).values())
    bos_id = bos_prefix(tokenizer)
    wanted = set(BandedMethod.uses) | {"token_counts"}
    stats, gathered = collect_source_stats(
        model, calibration, statistics=wanted, model_tokens=sources.calibration_tokens, bos_id=bos_id
    )
    special = special_token_ids(model, tokenizer)
    texts = dense.eval_ids
    stored = dict(bits=request.bits, group_size=storage.group_size, band_bits=storage.band_bits)

    def patch(copy, candidate):
        patch_model(
            copy, rank=candidate.rank, method=candidate.method(), calibration=stats, tokenizer=tokenizer, **stored
        )
        copy.factor_embed_report.sources = dict(gathered)  # ready statistics carry no source names
        return copy

    def measure(m) -> dict[str, dict]:
        figures = {n: dense.evaluate(m, tokenizer, n, sources.eval_tokens) for n in texts}
        return {n: {"perplexity": f["perplexity"], **fidelity_figures(f["fidelity"])} for n, f in figures.items()}

    def measure_trim(rows: int) -> dict[str, float]:
        trim = TrimmedPeer.ranked(stats, special, rows, tokenizer.unk_token_id)
        windows = {n: e["window"] for n, e in dense.evaluation.items()}
        return {n: trim.perplexity(model, ids, windows[n], bos_id=bos_id) for n, ids in texts.items()}

    spec = request.plan
    searched = spec[0] in ("target", "target_kld")
    size = {spec[0]: spec[1]} if searched else {"budget": budget_bytes(spec, fp32)}
    return (run_target if searched else run_plan)(
        model,
        **size,
        fp32_bytes=fp32,
        patch=patch,
        measure=measure,
        measure_trim=measure_trim,
        dense_perplexity={n: e["perplexity"] for n, e in dense.evaluation.items()},
        stored_bytes_of=lambda m: embedding_bytes(m)["stored"],
        served=list(request.served),
        special_rows=int(special.numel()),
        **stored,
    )
