"""Checks ``patch_model`` runs on a model and its arguments before any factor is computed: a transformers model with
real float weights, the roles to factorize, their ranks, and the memory the factors will need."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from ..adapters import EmbeddingAdapter, get_adapter
from ..config import INPUT, OUTPUT, QUANT_METHOD
from ..errors import AlreadyPatchedError, FactorEmbedError, UnsupportedModelError
from ..factorize.lowrank import estimate_bytes
from ..factorize.ranks import check_rank, rank_for_budget
from ..lazy import pretrained_model_class as _pretrained_model_class
from ..options import check_target as check_target_value
from ..quantizer.structure import dense_shape, factorized_layers

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

#: Quantizers whose models hold plain dequantized float weights, which can be factorized like any other.
_DEQUANTIZED_ON_LOAD = {"gguf"}


def check_model(model: PreTrainedModel) -> EmbeddingAdapter:
    if not isinstance(model, _pretrained_model_class()):
        raise UnsupportedModelError(f"patch_model takes a transformers PreTrainedModel, got {type(model).__name__}")
    qc = getattr(model.config, "quantization_config", None)
    quant_method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if factorized_layers(model) or str(quant_method) == QUANT_METHOD:
        raise AlreadyPatchedError(
            "the model's embeddings are factorized already; to factorize again at another rank, call "
            "hf_factor_embed.densify(model) first (or start from the dense model)."
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None or quant_method is not None:
        name = str(getattr(quant_method, "value", quant_method))
        if name not in _DEQUANTIZED_ON_LOAD:
            raise FactorEmbedError(
                f"the model is quantized ({name}); factorize the float model first, then quantize it "
                f"(hf_factor_embed composes with quantization in that order)."
            )
    adapter = get_adapter(model)
    for role in (INPUT, OUTPUT):
        module = adapter.get(model, role)
        if module is None:
            continue
        weight = module.weight
        if weight.is_meta:
            raise FactorEmbedError(
                f"the {role} embedding of {type(model).__name__} is on the meta device (no data to factorize); "
                f"load the model with real weights (no init_empty_weights / offloading) before patch_model."
            )
        if not weight.is_floating_point() or type(weight) not in (torch.Tensor, torch.nn.Parameter):
            raise FactorEmbedError(
                f"the {role} embedding holds {type(weight).__name__} of dtype {weight.dtype}, not float weights; "
                f"factorize the float model first, then quantize it."
            )
    return adapter


def head_is_tied(model: PreTrainedModel, adapter: EmbeddingAdapter) -> bool:
    head = adapter.get(model, OUTPUT)
    return head is not None and head.weight is adapter.get(model, INPUT).weight


def pick_roles(model: PreTrainedModel, adapter: EmbeddingAdapter, roles: Iterable[str] | None) -> list[str]:
    available = adapter.roles(model)
    if roles is None:
        return [r for r in (INPUT, OUTPUT) if r in available]
    roles = list(dict.fromkeys(roles))
    unknown = [r for r in roles if r not in available]
    if unknown:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no embedding for roles {unknown}; it has {available} (adapter {adapter.name})"
        )
    if not roles:
        raise FactorEmbedError("roles is empty: name at least one embedding to factorize")
    return roles


def resolve_ranks(
    model: PreTrainedModel,
    adapter: EmbeddingAdapter,
    roles: list[str],
    rank: int | Mapping[str, int] | None,
    budget: float | None,
) -> dict[str, int]:
    if (rank is None) == (budget is None):
        raise FactorEmbedError(
            "give exactly one of rank=..., budget=... (share of parameters to keep, 0..1) or target=... "
            "(perplexity ratio to the dense model, with calibration text)"
        )
    ranks: dict[str, int] = {}
    for role in roles:
        v, d = dense_shape(adapter.get(model, role))
        if budget is not None:
            if not (isinstance(budget, (int, float)) and 0 < budget < 1):
                raise FactorEmbedError(f"budget={budget!r} must be a share strictly between 0 and 1")
            r = rank_for_budget(budget, v, d)
        else:
            r = rank.get(role) if isinstance(rank, Mapping) else rank
            if r is None:
                raise FactorEmbedError(f"rank mapping {dict(rank)} has no entry for role {role!r}")
        check_rank(r, v, d, role)
        ranks[role] = r
    tied_ranks = {ranks.get(INPUT), ranks.get(OUTPUT)} - {None}
    if INPUT in ranks and OUTPUT in ranks and head_is_tied(model, adapter) and len(tied_ranks) > 1:
        raise FactorEmbedError(f"a tied embedding and head share one pair of factors: give them one rank, not {ranks}")
    return ranks


def check_memory(plan) -> None:
    """Refuse up front, not after minutes of work, when the factors and the workspace will not fit in RAM."""
    import psutil

    held, workspace = 0, 0
    for role, module in plan.originals.items():
        if plan.tied and role == OUTPUT:
            continue
        v, d = dense_shape(module)
        held += 2 * 4 * plan.ranks[role] * (v + d)  # float32 factors, then the layer's own copy of them
        workspace = max(workspace, estimate_bytes(v, d, plan.ranks[role]))  # one matrix is factorized at a time
    need = held + workspace
    available = psutil.virtual_memory().available
    if need > available:
        raise FactorEmbedError(
            f"factorizing needs about {need / 2**30:.1f} GiB of free memory but {available / 2**30:.1f} GiB is "
            f"available; lower the rank, factorize one role at a time (roles=...), or free memory first."
        )


def check_target_args(model, adapter, rank, budget, target) -> None:
    if rank is not None or budget is not None:
        raise FactorEmbedError("give exactly one of rank=..., budget=... or target=...")
    check_target_value("target", target)
    if adapter.get(model, OUTPUT) is None:
        raise FactorEmbedError("target=... measures perplexity, which needs a language-model head")


def default_method(calibrated: bool) -> str:
    """The best method by the quality benchmark (benchmarks/RESULTS.md) for the data at hand."""
    return "banded" if calibrated else "svd"
