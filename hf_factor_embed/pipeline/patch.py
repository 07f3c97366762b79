"""``patch_model`` and ``densify``: a pretrained model's embeddings to low-rank factors and back."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapters import EmbeddingAdapter
from ..calibration.model_text import bos_prefix, check_tokenizer, special_token_ids
from ..calibration.stats import CalibrationStats
from ..config import INPUT, OUTPUT, FactorEmbedConfig
from ..errors import FactorEmbedError
from ..factorize import FactorizationMethod, FactorizationTask, Factors, get_method
from ..factorize.lowrank import relative_error
from ..factorize.ranks import largest_saving_rank
from ..measure.report import ModuleReport, PatchReport
from ..options import Storage, check_positive_int
from ..quantizer.hf_quantizer import attach, give_own_config
from ..quantizer.storage import round_factors
from ..quantizer.structure import (
    dense_shape,
    embed_scale_of,
    install_layers,
)
from .model_checks import (
    check_memory,
    check_model,
    check_target_args,
    default_method,
    head_is_tied,
    pick_roles,
    resolve_ranks,
)

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


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

    Give one size: ``rank`` (every role, or a mapping role -> rank), ``budget`` (the share of each matrix's
    parameters kept) or ``target`` (the largest held-out perplexity ratio to dense on the last ``holdout_tokens``
    tokens of each calibration source; the smallest rank, a multiple of 8, that meets it).

    ``calibration``: what the model serves: token ids, text (with ``tokenizer``), ready :class:`CalibrationStats`,
    or a mapping name -> either, each source weighted alike (``model_tokens``: the tokens of each the model reads;
    all are counted). With it the default ``method`` is ``"banded"`` (exact rows for the tokens the text and the
    model's predictions rank highest, the special tokens always among them; a weighted factorization for the rest),
    without it ``"svd"``; a configured instance (``BandedMethod(band_share=0.9, tail="pq")``) is taken as is.
    ``tokenizer`` is checked against the embedding, and every calibration window starts with the ``<bos>`` it puts
    before text. ``roles``: which embeddings (default the token embedding and the head; adapters name others).

    ``bits`` (8 or 4), ``group_size``, ``band_bits``: integer storage (:class:`hf_factor_embed.options.Storage`;
    A at ``bits``, B and the band at ``band_bits``, 8 by default); the factors in memory are rounded at once, so
    what you measure is what you save. ``verbose``: print the report (kept as ``model.factor_embed_report``).

    Returns the same model, patched: a tied head shares the embedding's factor Parameters, and the model gets a
    config of its own. ``docs/reference.md`` has every argument at length.
    """
    started = time.perf_counter()
    Storage(bits=bits, group_size=group_size, band_bits=band_bits)  # checked as every entry point checks it
    check_positive_int("model_tokens", model_tokens)
    check_positive_int("holdout_tokens", holdout_tokens)
    plan = _plan(model, rank, budget, target, roles, method)
    if tokenizer is not None:
        check_tokenizer(model, tokenizer)
    plan.exact_ids = special_token_ids(model, tokenizer)
    stats, holdout = _calibrate(model, plan, calibration, tokenizer, target, holdout_tokens, model_tokens)
    factorizer = _pick_method(plan, stats)
    search_note = None
    if target is not None:
        search_note = _search_rank(model, plan, factorizer, stats, holdout, target)
    check_memory(plan)
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
    adapter = check_model(model)
    roles = pick_roles(model, adapter, roles)
    tied = OUTPUT in roles and INPUT in roles and head_is_tied(model, adapter)
    if INPUT in roles and OUTPUT not in roles and head_is_tied(model, adapter):
        raise FactorEmbedError(
            "the output head is tied to the input embedding; factorize both "
            "(roles=('input', 'output')) so they stay tied"
        )
    if target is not None:
        check_target_args(model, adapter, rank, budget, target)
        rank = 1  # placeholder, replaced by the search; it passes the range checks for every role
    ranks = resolve_ranks(model, adapter, roles, rank, budget)
    if method is not None:
        get_method(method)  # an unknown name fails before the (slow) calibration pass
    originals = {role: adapter.get(model, role) for role in roles}
    return _Plan(adapter, roles, tied, ranks, originals, method)


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
    uses = set(get_method(plan.method or default_method(True)).uses)
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
    factorizer = get_method(plan.method or default_method("token_counts" in available))
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
    """The config the checkpoint stores: each role's layout (what its layer holds), and the embedding's scale."""
    modules: dict[str, dict] = {}
    for role in plan.roles:
        module = plan.originals[role]
        modules[role] = factors[_source_role(plan, role)].layout.as_config()
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
