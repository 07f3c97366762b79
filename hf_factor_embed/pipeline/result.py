"""What ``compression.json`` holds: the request, the patch report, sizes, every text's figures beside dense's and
the peers', the continuations a user reads, and a warning for each source not served that fell far outside."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import torch

from ..calibration.model_text import describe_feed, special_token_ids
from ..measure.baseline import DenseBaseline, param_bytes
from ..measure.continuations import beside_dense
from ..measure.texts import compare_to_dense
from ..models.load import load_model
from ..options import DEFAULT_TAIL_SUB_DIM
from ..quantizer.sizes import embedding_bytes
from ..quantizer.structure import factorized_layers
from .budget import BAND_SHARE
from .plan import chosen_candidate
from .request import CompressRequest

logger = logging.getLogger(__name__)

#: A source not served whose perplexity ratio passes this is a warning in the report and the card.
FAR_OUTSIDE = 2.0


def build_result(model, tokenizer, request: CompressRequest, dense: DenseBaseline, plan: dict | None, **meta) -> dict:
    """The record of a run; ``meta``: ``patch_seconds``, ``command``, ``base_model_id``, ``license``."""
    report = model.factor_embed_report
    has_band = any(layer.dense_index is not None for layer in factorized_layers(model).values())
    special = special_token_ids(model, tokenizer) if has_band else torch.zeros(0, dtype=torch.long)
    qc = model.config.quantization_config
    result = {
        "base_model": str(request.model_name),
        "base_model_id": meta.get("base_model_id"),
        "license": meta.get("license"),
        "gguf_file": request.gguf_file,
        "dtype": request.dtype,
        "architecture": type(model).__name__,
        "requested": request.size,
        "bits": request.bits,
        "group_size": qc.group_size,
        "band_bits": qc.band_bits,
        "report": report.as_dict(),
        "calibration_tokens": _count_tokens(meta.get("calibration")),
        "fed_as": describe_feed(dense.bos_id, tokenizer),
        "special_tokens_exact": tokenizer.convert_ids_to_tokens(special.tolist()) if tokenizer else special.tolist(),
        **_tail_record(request, plan),
        "param_bytes_dense": dense.param_bytes,
        "embedding_bytes": embedding_bytes(model),
        "param_bytes_factorized": param_bytes(model),
        "patch_seconds": round(meta.get("patch_seconds", 0.0), 2),
        "command": meta.get("command"),
    }
    result["evaluation"] = _evaluation(model, tokenizer, request, dense, plan)
    dense_again = functools.partial(_dense_model, request)
    result["continuations"] = beside_dense(model, tokenizer, dense.prompts, dense.continuations, dense_again)
    result["served"] = request.served
    result["warnings"] = _warnings(result["evaluation"], request.served, plan) if request.served else []
    if dense.peers is not None:
        result["peers"] = dense.peers
    if plan is not None:
        result["plan"] = plan
    return result


def _dense_model(request: CompressRequest):
    """The dense model as compress loaded it, again (for a loop's check; a folder or a bundled model maps its file)."""
    return load_model(request.model_name, gguf_file=request.gguf_file, dtype=request.dtype)[0]


def _tail_record(request: CompressRequest, plan: dict | None) -> dict:
    if plan is not None:
        kept = chosen_candidate(plan)
        return {"band_share": BAND_SHARE, "tail": kept["tail"], "tail_sub_dim": kept["tail_sub_dim"]}
    tail = request.settings.tail
    pq = tail.tail == "pq"
    sub_dim = (tail.tail_sub_dim or DEFAULT_TAIL_SUB_DIM) if pq else None
    return {"band_share": tail.given.get("band_share"), "tail": tail.tail or "lowrank", "tail_sub_dim": sub_dim}


def _evaluation(model, tokenizer, request: CompressRequest, dense: DenseBaseline, plan: dict | None) -> dict:
    """Each measured text's figures beside dense's (the plan measured its chosen candidate already)."""
    measured = chosen_candidate(plan) if plan is not None else {"perplexity": {}}
    eval_tokens = request.settings.sources.eval_tokens
    out = {}
    for name in dense.eval_ids:
        if name in measured["perplexity"]:
            ours = {"perplexity": measured["perplexity"][name]}
            out[name] = compare_to_dense(dense.evaluation[name], ours) | measured.get("fidelity", {}).get(name, {})
        else:
            out[name] = compare_to_dense(dense.evaluation[name], dense.evaluate(model, tokenizer, name, eval_tokens))
        if request.settings.sources.serve is not None:
            out[name] |= {"served": name in request.served, "origin": request.origins.get(name)}
    return out


def _count_tokens(calibration) -> int:
    if calibration is None:
        return 0
    if isinstance(calibration, Mapping):
        return sum(int(ids.numel()) for ids in calibration.values())
    return int(calibration.numel())


def _warnings(evaluation: dict, served: dict, plan: dict | None) -> list[str]:
    """One line for each source not served that the compression puts far outside the dense model's quality, and
    one for a quality target that no budget met."""
    out = []
    for name, e in evaluation.items():
        if name not in served and e.get("ratio", 1.0) > FAR_OUTSIDE:
            out.append(
                f"{name} (not served) is at {e['ratio']:.2f}x the dense perplexity: serve it (add it to the "
                f"calibration sources) or give a larger size (--max-bytes, --rank) if the model will see such text"
            )
            logger.warning("%s", out[-1])
    if plan is not None and plan.get("target_met") is False:
        last = plan["search"][-1]
        kld = "target_kld" in plan
        goal = f"--target-kld {plan['target_kld']:g}" if kld else f"--target {plan['target']:g}"
        worst = f"KL divergence {last['worst_served']:.4f}" if kld else f"{last['worst_served']:.3f}x dense"
        out.append(
            f"{goal} was not met at any budget searched: kept the largest, {plan['budget_share']:.0%} of the fp32 "
            f"embedding (worst served source {worst}; behind trimming at equal bytes: "
            f"{', '.join(last['worse_than_trim']) or 'none'})"
        )
    return out
