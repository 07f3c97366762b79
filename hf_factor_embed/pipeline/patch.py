"""``patch_model`` and ``densify``: a pretrained model's embeddings to low-rank factors and back."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import EmbeddingAdapter, get_adapter
from ..calibration.model_text import bos_prefix, check_tokenizer, special_token_ids
from ..calibration.stats import CalibrationStats
from ..config import INPUT, OUTPUT, QUANT_METHOD, FactorEmbedConfig
from ..errors import AlreadyPatchedError, FactorEmbedError, UnsupportedModelError
from ..factorize import FactorizationMethod, FactorizationTask, Factors, get_method
from ..factorize.lowrank import estimate_bytes, relative_error
from ..factorize.ranks import check_rank, largest_saving_rank, rank_for_budget
from ..layers.factorized import FactorizedLayer
from ..lazy import pretrained_model_class as _pretrained_model_class
from ..measure.report import ModuleReport, PatchReport
from ..options import Storage, check_target
from ..quantizer.hf_quantizer import attach, detach, give_own_config
from ..quantizer.storage import round_factors
from ..quantizer.structure import (
    DENSE_SKELETON,
    dense_shape,
    embed_scale_of,
    factorized_layers,
    install_layers,
    untie_keys,
)

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

#: Quantizers whose models hold plain dequantized float weights, which can be factorized like any other.
_DEQUANTIZED_ON_LOAD = {"gguf"}


@dataclass
class _Plan:
    """What ``patch_model`` works out before any factor is computed."""

    adapter: EmbeddingAdapter
    roles: list[str]
    tied: bool
    ranks: dict[str, int]
    originals: dict[str, nn.Module]
    method: str | FactorizationMethod | None  # None until the calibration data is known
    sources: dict[str, int] = field(default_factory=dict)  # calibration source -> tokens gathered from it
    exact_ids: torch.Tensor | None = None  # the special tokens: exact rows in every band
    bos_id: int | None = None  # first in every window the model reads, as the tokenizer feeds text


def patch_model(
    model: PreTrainedModel,
    rank: int | Mapping[str, int] | None = None,
    *,
    budget: float | None = None,
    method: str | FactorizationMethod | None = None,
    roles: Iterable[str] | None = None,
    calibration=None,
    tokenizer=None,
    target: float | None = None,
    holdout_tokens: int = 2048,
    model_tokens: int | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    band_bits: int | None = None,
    verbose: bool = False,
) -> PreTrainedModel:
    """Replace the model's token embedding and output head (in place) by low-rank factors A @ B.

    Args:
        model: a loaded transformers model with real (not meta, not quantized) weights.
        rank: the rank r of every factorized matrix, or a mapping role -> rank.
        budget: instead of ``rank``, the share of each matrix's parameters to keep (0 < budget < 1).
        method: the factorization method, one of :func:`hf_factor_embed.available_methods` (default: see
            ``calibration``), or a configured instance, e.g.
            ``hf_factor_embed.factorize.banded.BandedMethod(band_share=0.95)``.
        roles: which embeddings to factorize; default the token embedding and the output head (``"input"``,
            ``"output"``). Adapters name others, e.g. ``"position"`` and ``"token_type"`` for BERT.
        calibration: data for the data-aware methods: token ids (a tensor), text (a string, a list of strings or
            a ``datasets.Dataset`` with a ``text`` column, with ``tokenizer``), ready :class:`CalibrationStats`,
            or a mapping name -> any of the first three: *what you serve*, as named sources (kinds of text,
            languages). Each source counts alike whatever its length, so the band covers every source's tokens,
            and ``target`` must hold on each source's held-out slice (the worst one decides). With it the
            default method is ``"banded"`` (exact rows for the tokens
            the calibration text and the model's own predictions rank highest, a two-sided weighted
            factorization for the rest, at the size of a rank-``rank`` factorization); without it, plain
            ``"svd"``. What to give: text like the text the model will serve, as varied as that text is.
            About 16k tokens is enough for the ranking of frequent tokens; more kinds of text matter more than
            more of one kind, because the hidden-state statistics the head is fitted to are specific to the
            kind of text (benchmarks/RESULTS.md measures both). With a few thousand tokens the model's own
            predictions still rank the band well; text unlike the served text costs far more than little text.
        tokenizer: the model's tokenizer, for calibration text. It is checked against the embedding (a tokenizer of
            another vocabulary is refused), its special tokens always keep exact band rows, and every calibration
            window starts with the ``<bos>`` it puts before text (:mod:`hf_factor_embed.calibration.model_text`).
            Without it,
            token ids are read as given and the special tokens are those the model's configs name.
        target: instead of ``rank`` or ``budget``, the largest acceptable ratio of perplexity to the dense
            model's (e.g. 1.10) on the last ``holdout_tokens`` tokens of the calibration text (of each named
            source), which are then held out from the statistics. The smallest rank (a multiple of 8) that
            meets it is chosen; when even
            full rank does not, full rank is used and the report says so. Causal language models only.
        holdout_tokens: the held-out slice for ``target``.
        model_tokens: run the model over each source's first ``model_tokens`` calibration tokens only (the
            hidden-state moment and the expected probabilities); token counts still come from all the text, which
            costs nothing and ranks many more of a large vocabulary's served tokens. Default: all of it.
        bits: 8 or 4 to store the factors as integers with fp16 scales: ``bits`` for the codes A (V x r, the
            bulk), ``band_bits`` for the basis B and the band's rows. The checkpoint's factors shrink by about
            4x / 7x. A's columns are balanced against B's rows first (the product is unchanged). The factors in
            memory are rounded to the stored values at once, so what you measure is what you save; they stay
            float Parameters (training moves them; saving rounds them again). Default None: float factors.
            See :mod:`hf_factor_embed.quantizer.rounding`.
        group_size: columns per scale of A with ``bits`` (default: one scale per row for 8 bits, 32 for 4 bits).
        band_bits: bits of B and the band's rows, one scale per row for 8 (default 8 whenever ``bits`` is set:
            B is small, and the band holds the most used tokens' exact rows, which lose in int4 what the whole
            embedding does; ``python benchmarks/pareto.py``, SmolLM2 r=256, pydoc held back / licenses: all
            int4 17.61 / 47.45, band and B in int8 16.06 / 42.48, float 15.84 / 40.80).
        verbose: print the report (it is logged at INFO level and kept as ``model.factor_embed_report`` anyway).

    Returns:
        The same model object, patched. A tied head shares the embedding's factor Parameters. The model gets
        a config object of its own, so other models built from the same config stay dense.
    """
    started = time.perf_counter()
    Storage(bits=bits, group_size=group_size, band_bits=band_bits)  # checked as every entry point checks it
    plan = _plan(model, rank, budget, target, roles, method)
    if tokenizer is not None:
        check_tokenizer(model, tokenizer)
    plan.exact_ids = special_token_ids(model, tokenizer)
    stats, holdout = _calibrate(model, plan, calibration, tokenizer, target, holdout_tokens, model_tokens)
    factorizer = _pick_method(plan, stats)
    search_note = None
    if target is not None:
        search_note = _search_rank(model, plan, factorizer, stats, holdout, target)
    _check_memory(plan)
    factors = _factorize_all(plan, factorizer, stats, plan.ranks)
    config = _config(plan, factors, rank if isinstance(rank, int) and target is None else None, budget)
    config.set_storage(bits, group_size, band_bits)
    report = _report(model, plan, factors, search_note)
    _install(model, plan, config, factors)
    if bits is not None:
        round_factors(model, config)
    report.model_params_after = model.num_parameters()
    report.seconds = time.perf_counter() - started
    model.factor_embed_report = report
    logger.info("%s", report)
    if verbose:
        print(report)
    return model


def _plan(model, rank, budget, target, roles, method) -> _Plan:
    """Check the model and the arguments; resolve roles, tying and ranks (a placeholder rank for ``target``)."""
    adapter = _check_model(model)
    roles = _pick_roles(model, adapter, roles)
    tied = OUTPUT in roles and INPUT in roles and _head_is_tied(model, adapter)
    if INPUT in roles and OUTPUT not in roles and _head_is_tied(model, adapter):
        raise FactorEmbedError(
            "the output head is tied to the input embedding; factorize both "
            "(roles=('input', 'output')) so they stay tied"
        )
    if target is not None:
        _check_target(model, adapter, rank, budget, target)
        rank = 1  # placeholder, replaced by the search; it passes the range checks for every role
    ranks = _resolve_ranks(model, adapter, roles, rank, budget)
    if method is not None:
        get_method(method)  # an unknown name fails before the (slow) calibration pass
    originals = {role: adapter.get(model, role) for role in roles}
    return _Plan(adapter, roles, tied, ranks, originals, method)


def _check_target(model, adapter, rank, budget, target) -> None:
    if rank is not None or budget is not None:
        raise FactorEmbedError("give exactly one of rank=..., budget=... or target=...")
    check_target("target", target)
    if adapter.get(model, OUTPUT) is None:
        raise FactorEmbedError("target=... measures perplexity, which needs a language-model head")


def _calibrate(model, plan: _Plan, calibration, tokenizer, target, holdout_tokens, model_tokens=None):
    """(statistics, held-out token ids per source): what the method will use, one streamed pass per source.

    Named sources (a mapping) are gathered one at a time and combined with equal weights, so each source's
    tokens rank for the band whatever its length; with ``target`` each source keeps its own held-out slice.
    """
    if target is not None and (calibration is None or isinstance(calibration, CalibrationStats)):
        raise FactorEmbedError("target=... needs calibration text or token ids (a slice is held out to evaluate)")
    if calibration is None or isinstance(calibration, CalibrationStats):
        return calibration, None
    from ..calibration.collect import collect_source_stats, tokenize_calibration

    named = calibration if isinstance(calibration, Mapping) else {"calibration": calibration}
    if not named:
        raise FactorEmbedError("calibration={} names no source; give at least one name -> text")
    token_ids = {name: tokenize_calibration(data, tokenizer) for name, data in named.items()}
    holdouts = None
    if target is not None:
        holdouts = {name: _hold_out(name, ids, holdout_tokens) for name, ids in token_ids.items()}
        token_ids = {name: ids[:-holdout_tokens] for name, ids in token_ids.items()}
    uses = set(get_method(plan.method or _default_method(True)).uses)
    if OUTPUT not in plan.roles:
        uses.discard("hidden_cov")  # the metric of the head's inputs serves the head only
    wanted = uses | {"token_counts"}
    bos_id = bos_prefix(tokenizer)
    stats, plan.sources = collect_source_stats(
        model, token_ids, statistics=wanted, model_tokens=model_tokens, bos_id=bos_id
    )
    plan.bos_id = bos_id
    return stats, holdouts


def _hold_out(name: str, token_ids: torch.Tensor, holdout_tokens: int) -> torch.Tensor:
    if token_ids.numel() < 2 * holdout_tokens:
        raise FactorEmbedError(
            f"target=... holds out {holdout_tokens} tokens of each calibration source and needs as many again for "
            f"the statistics; {name!r} has {token_ids.numel()} tokens: give more text or a smaller holdout_tokens"
        )
    return token_ids[-holdout_tokens:]


def _pick_method(plan: _Plan, stats: CalibrationStats | None) -> FactorizationMethod:
    available = set() if stats is None else stats.available()
    factorizer = get_method(plan.method or _default_method("token_counts" in available))
    plan.method = factorizer.name  # what the config and the report name, also for a configured instance
    missing = set(factorizer.needs) - available
    if missing:
        raise FactorEmbedError(f"method {factorizer.name!r} needs calibration statistics {sorted(missing)}")
    return factorizer


def _factorize_all(plan: _Plan, factorizer, stats, rank_of: dict[str, int]) -> dict[str, Factors]:
    """Factors for every role that owns some (a tied head is served by the input's)."""
    out = {}
    for role in plan.roles:
        if plan.tied and role == OUTPUT:
            continue
        task_roles = (INPUT, OUTPUT) if plan.tied and role == INPUT else (role,)
        weight = plan.originals[role].weight.detach()
        task = FactorizationTask(weight, rank_of[role], task_roles, stats, exact_ids=plan.exact_ids)
        out[role] = factorizer.factorize(task)
    return out


def _search_rank(model, plan: _Plan, factorizer, stats, holdout, target) -> str:
    """Set ``plan.ranks`` to the smallest rank meeting ``target``; return the report's note on it."""
    from .rank_search import smallest_rank_within

    max_rank = min(largest_saving_rank(*dense_shape(plan.originals[r])) for r in plan.roles)
    swapped = {r: m for r, m in plan.originals.items() if not (plan.tied and r == OUTPUT)}
    found, ratios = smallest_rank_within(
        model,
        swapped,
        lambda r: _factorize_all(plan, factorizer, stats, dict.fromkeys(plan.roles, r)),
        holdout,
        target,
        max_rank,
        bos_id=plan.bos_id,
    )
    plan.ranks = dict.fromkeys(plan.roles, found)
    worst = max(ratios, key=ratios.get)
    each = ", ".join(f"{name} {ratio:.3f}x" for name, ratio in ratios.items())
    return f"rank {found} chosen for target {target}: held-out perplexity ratio to dense {each}; worst {worst}" + (
        "" if ratios[worst] <= target else " (target not reached even at the largest rank that saves parameters)"
    )


def _source_role(plan: _Plan, role: str) -> str:
    """The role whose factors ``role`` uses: a tied head reads the input's."""
    return INPUT if plan.tied and role == OUTPUT else role


def _config(plan: _Plan, factors: dict[str, Factors], rank: int | None, budget: float | None) -> FactorEmbedConfig:
    modules: dict[str, dict] = {}
    for role in plan.roles:
        module, f = plan.originals[role], factors[_source_role(plan, role)]
        v, d = dense_shape(module)
        modules[role] = {"rank": f.rank, "num_embeddings": v, "embedding_dim": d}
        if f.dense_index is not None:
            modules[role]["dense_rows"] = f.dense_index.numel()
        if f.tail_codes is not None:
            modules[role]["tail_subvectors"], modules[role]["tail_centroids"] = f.tail_codes.codebooks.shape[:2]
            modules[role]["tail_exact_columns"] = f.tail_codes.columns.numel()
        scale = embed_scale_of(module) if role != OUTPUT else None
        if scale is not None:
            modules[role]["embed_scale"] = scale
    return FactorEmbedConfig(rank=rank, budget=budget, method=plan.method, modules=modules, tied=plan.tied)


def _report(model, plan: _Plan, factors: dict[str, Factors], note: str | None) -> PatchReport:
    names = {id(m): n for n, m in model.named_modules()}
    report = PatchReport(
        method=plan.method, model_params_before=model.num_parameters(), note=note, sources=dict(plan.sources)
    )
    for role in plan.roles:
        module, source = plan.originals[role], _source_role(plan, role)
        f = factors[source]
        v, d = dense_shape(module)
        k = 0 if f.dense_index is None else f.dense_index.numel()
        shared = source != role
        report.modules.append(
            ModuleReport(
                role=role,
                name=names.get(id(module), role),
                shape=(v, d),
                rank=f.rank,
                dense_rows=k,
                params_before=v * d,
                params_after=0 if shared else f.rank * (v + d) + k * d + _code_elements(f),
                shares_with=source if shared else None,
                relative_error=None if shared else _relative_error(module.weight.detach(), f),
            )
        )
    return report


def _code_elements(f: Factors) -> int:
    """Elements of the tail's product codes (uint8 codes count one each, as ``num_parameters`` counts them)."""
    codes = f.tail_codes
    if codes is None:
        return 0
    return sum(t.numel() for t in (codes.codes, codes.codebooks, codes.rotation, codes.columns, codes.column_values))


def _relative_error(weight: torch.Tensor, f: Factors) -> float:
    if f.tail_codes is None:
        return relative_error(weight, f.a, f.b, f.dense_index)
    return float((f.dense(weight) - weight).norm() / weight.norm().clamp_min(1e-30))


def _install(model, plan: _Plan, config: FactorEmbedConfig, factors: dict[str, Factors]) -> None:
    """Swap the factorized layers in, fill them, and mark the model as factorized."""
    dense_rows = {
        role: None if f.dense_index is None else plan.originals[role].weight.detach()[f.dense_index]
        for role, f in factors.items()
    }
    give_own_config(model)
    layers = install_layers(model, plan.adapter, config)
    for role, f in factors.items():
        layers[role].set_factors(f.a, f.b, f.dense_index, dense_rows[role], tail_codes=f.tail_codes)
    attach(model, config)


def densify(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`patch_model` in place: dense modules of the original classes holding A @ B, tying restored."""
    layers = factorized_layers(model)
    if not layers:
        raise FactorEmbedError("densify: the model has no factorized embeddings")
    adapter = get_adapter(model)
    config = _factor_config(model)
    roles = list(config.modules) if config is not None else [INPUT, OUTPUT]
    for role in sorted(roles, key=lambda r: r == INPUT):  # the head first: it may share the input's factors
        layer = adapter.get(model, role)
        if not isinstance(layer, FactorizedLayer):
            continue
        dense = getattr(layer, DENSE_SKELETON, None)
        if dense is None:
            dense = layer.to_dense()
        else:
            dense = dense.to_empty(device=layer.weight.device).to(layer.weight.dtype)
            with torch.no_grad():
                dense.weight.copy_(layer.dense_weight())
                if getattr(layer, "bias", None) is not None:
                    dense.bias.copy_(layer.bias)
        adapter.set(model, role, dense)
    untie_keys(model)
    model.tie_weights()
    detach(model)
    return model


def _factor_config(model: PreTrainedModel) -> FactorEmbedConfig | None:
    qc = getattr(model.config, "quantization_config", None)
    return qc if isinstance(qc, FactorEmbedConfig) else None


def _check_model(model: PreTrainedModel) -> EmbeddingAdapter:
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


def _head_is_tied(model: PreTrainedModel, adapter: EmbeddingAdapter) -> bool:
    head = adapter.get(model, OUTPUT)
    return head is not None and head.weight is adapter.get(model, INPUT).weight


def _pick_roles(model: PreTrainedModel, adapter: EmbeddingAdapter, roles: Iterable[str] | None) -> list[str]:
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


def _resolve_ranks(
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
    if INPUT in ranks and OUTPUT in ranks and _head_is_tied(model, adapter) and len(tied_ranks) > 1:
        raise FactorEmbedError(f"a tied embedding and head share one pair of factors: give them one rank, not {ranks}")
    return ranks


def _check_memory(plan: _Plan) -> None:
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


def _default_method(calibrated: bool) -> str:
    """The best method by the quality benchmark (benchmarks/RESULTS.md) for the data at hand."""
    return "banded" if calibrated else "svd"
