"""The plan: spend a byte budget where the served text says it buys most, and guard what is not served.

A budget (``--max-bytes 0.08``: 8% of the fp32 embedding's bytes; ``--max-bytes 40MB``: a size) can be spent on
many exact rows and a small low-rank tail, or on fewer rows and a tail in which every token keeps a row of its own
(product codes, one byte per 16, 8, 6, 5 or 4 values: :mod:`hf_factor_embed.factorize.product`). Which is better depends
on the model and on what is served, so the plan measures instead of guessing:

1. For each tail format, the largest band that fits the budget, from the shapes the layers will hold and the bytes
   the checkpoint stores for them (:func:`planned_bytes`, the count ``compress`` reports).
2. Each candidate is factorized from the same calibration statistics and measured: perplexity on the held-back
   part of every served source, and on every measured source not served.
3. Hard vocabulary trimming at the same bytes (vocabtrimmer: as many int8 rows as fit, ranked by the same scores)
   is measured on the sources not served: the guard.
4. The choice (:func:`choose`): the candidates within ``SERVED_TOLERANCE`` (5%) of the best on the served
   sources (the worst served source decides) are eligible. Among them, the one worse than trimming on the fewest
   sources not served (past 2% of trimming's perplexity and past 5% of dense's: the guard); then those within
   ``SERVED_PREFERENCE`` (2%) of the best on served text before the others; then the best geometric mean over the
   sources not served; then the best on served text. Measured on
   Gemma-3-270M at 8% with English served, that keeps served text within 1% of dense's perplexity and every
   language not served at 2x-5x (product codes, one byte per 8 values), where the low-rank tail at the same bytes
   is 17x-5.6e3x and trimming 47x-2.5e3x (benchmarks/RESULTS.md, *plan*).

A quality target instead of a budget (``--target 1.02``: every served source within 2% of dense's perplexity on its
held-back part) is a search over budgets (:func:`run_target`): the plan runs at budgets from :data:`TARGET_SHARES`,
bisecting, and the smallest budget whose choice meets the target with the guard kept is kept, its candidates chosen
among those that meet it.

``compression.json`` lists every candidate measured, the trimming it was guarded against, and why one was chosen.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict

import torch

from ..errors import FactorEmbedError
from ..options import check_target
from .budget import TAIL_FORMATS, Candidate, candidates, check_budget, parse_max_bytes, smallest_plan_bytes

logger = logging.getLogger(__name__)

#: Candidates within this much of the best worst served ratio are eligible (0.05: 5% more perplexity on the worst
#: served source); among them the guard decides first, then those within ``SERVED_PREFERENCE`` (2%) come before the
#: rest, then the sources not served, then served text.
SERVED_TOLERANCE = 0.05
SERVED_PREFERENCE = 0.02
#: A source not served counts as worse than trimming past this ratio of trimming's perplexity, where it is also
#: past ``GUARD_FLOOR`` times dense: within 5% of dense a source is kept, whatever trimming does there.
GUARD_TOLERANCE = 1.02
GUARD_FLOOR = 1.05
#: The budgets a quality target searches, as shares of the fp32 embedding's bytes (those the model's smallest plan
#: fits); quality grows with the budget, so the search bisects: about four plans for these thirteen.
TARGET_SHARES = (0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)


def check_plan_arguments(
    max_bytes, serve, method, band_share, tail, tail_sub_dim, target=None
) -> tuple[str, float] | None:
    """The parsed budget (``("share", 0.08)``, ``("bytes", 4e7)``) or quality target (``("target", 1.02)``: a
    ``target`` with served sources, the banded method and none of its settings), or None for neither (a ``target``
    then searches the rank: :mod:`hf_factor_embed.pipeline.rank_search`); what the plan cannot go with is refused before
    anything loads."""
    if max_bytes is None:
        planned_target = target is not None and serve is not None and method in (None, "banded")
        if not planned_target or any(x is not None for x in (band_share, tail, tail_sub_dim)):
            return None
        check_target("target", target)
        return "target", float(target)
    spec = parse_max_bytes(max_bytes)
    if serve is None:
        raise FactorEmbedError(
            "--max-bytes measures candidates on the held-back part of each served source: name them with "
            "--calibration (e.g. --calibration pydoc --calibration lang:de), or give --rank"
        )
    if method not in (None, "banded"):
        raise FactorEmbedError(f"--max-bytes plans the banded method; --method {method} needs --rank")
    given = (("--band-share", band_share), ("--tail", tail), ("--tail-sub-dim", tail_sub_dim))
    chosen = [n for n, v in given if v is not None]
    if chosen:
        raise FactorEmbedError(
            f"{', '.join(chosen)}: the plan (--max-bytes) picks the band and the tail by measurement; give --rank to "
            f"set them yourself"
        )
    return spec


def worst_served(candidate: Mapping, served: list[str]) -> float:
    """A candidate's ratio to dense on its worst served source (1.0 without served sources)."""
    return max((candidate["ratio"][s] for s in served), default=1.0)


def choose(measured: list[dict], served: list[str], target: float | None = None) -> tuple[dict, str]:
    """The chosen candidate's record and the reason, from records with ``ratio`` (source -> ratio to dense) and
    ``worse_than_trim`` (sources not served past :data:`GUARD_TOLERANCE` of trimming). With a ``target`` the
    candidates that meet it on every served source are eligible (where one does), and the user's target replaces
    the preference for the best on served text."""

    def worst(c):
        return worst_served(c, served)

    def unserved_mean(c):
        logs = [math.log(max(r, 1e-9)) for s, r in c["ratio"].items() if s not in served]
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    best = min(worst(c) for c in measured)
    meeting = [c for c in measured if target is not None and worst(c) <= target]
    near = meeting or [c for c in measured if worst(c) <= best + SERVED_TOLERANCE]
    chosen = min(
        near,
        key=lambda c: (
            len(c["worse_than_trim"]),
            not meeting and worst(c) > best + SERVED_PREFERENCE,
            unserved_mean(c),
            worst(c),
        ),
    )
    eligible = f"within {target:g}x dense" if meeting else f"within {SERVED_TOLERANCE:.0%} of it"
    reason = (
        f"{chosen['name']}: worst served source {worst(chosen):.3f}x dense (best of all: {best:.3f}x; "
        f"{len(near)} of {len(measured)} candidates {eligible}); worse than trimming at "
        f"equal bytes on {len(chosen['worse_than_trim'])} sources not served "
        f"{'(' + ', '.join(chosen['worse_than_trim']) + ') ' if chosen['worse_than_trim'] else ''}"
        f"and {unserved_mean(chosen):.3f}x dense over them (geometric mean)"
    )
    return chosen, reason


def run_plan(
    model,
    *,
    budget: int,
    fp32_bytes: int,
    patch: Callable[[torch.nn.Module, Candidate], torch.nn.Module],
    measure: Callable[[torch.nn.Module], dict[str, float]],
    measure_trim: Callable[[int], dict[str, float]],
    dense_perplexity: Mapping[str, float],
    stored_bytes_of: Callable[[torch.nn.Module], int],
    served: list[str],
    bits: int | None,
    group_size: int | None = None,
    band_bits: int | None = None,
    special_rows: int = 0,
    formats: tuple[str, ...] = tuple(TAIL_FORMATS),
    target: float | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Factorize a copy of ``model`` for each candidate, measure, choose; returns (the chosen model, the plan's
    record for ``compression.json``, each candidate with its perplexities and their ratios to
    ``dense_perplexity``). ``patch(copy, candidate)`` factorizes a copy in place, ``measure(model)`` gives source ->
    perplexity, ``measure_trim(rows)`` the same for the dense model trimmed to ``rows`` int8 rows. ``target``: the
    candidates that meet it are chosen among (:func:`choose`).
    """

    def ratios(perplexity: Mapping[str, float]) -> dict[str, float]:
        return {name: round(p / dense_perplexity[name], 4) for name, p in perplexity.items()}

    v, d = model.get_input_embeddings().weight.shape
    element_size = model.get_input_embeddings().weight.element_size()
    sizes = dict(bits=bits, group_size=group_size, band_bits=band_bits, special_rows=special_rows)
    sizes["element_size"] = element_size
    check_budget(budget, v, d, fp32_bytes, **sizes)
    trim_rows = min(v, budget // (d + 2 * math.ceil(d / 64)))  # int8 rows in groups of 64, as the band stores them
    trim = ratios(measure_trim(trim_rows))
    record = {"budget_bytes": budget, "budget_share": round(budget / fp32_bytes, 4), "candidates": []}
    record["trim"] = {"rows": int(trim_rows), "ratio": trim}
    best_model, chosen_name = None, None
    for candidate in candidates(v, d, budget, formats=formats, **sizes):
        patched = patch(copy.deepcopy(model), candidate)
        stored = stored_bytes_of(patched)  # the candidate's layout counted: its planned bytes
        perplexity = measure(patched)
        ratio = ratios(perplexity)
        worse = sorted(s for s, r in ratio.items() if s not in served and s in trim and _behind(r, trim[s]))
        entry = {**asdict(candidate), "stored_bytes": stored, "share": round(stored / fp32_bytes, 4)}
        entry |= {"perplexity": perplexity, "ratio": ratio, "worse_than_trim": worse}
        record["candidates"].append(entry)
        logger.info("plan %s: %s", candidate.name, {k: round(r, 3) for k, r in ratio.items()})
        chosen, _ = choose(record["candidates"], served, target)
        if chosen["name"] != chosen_name:  # keep only the best model so far: one extra copy in memory
            best_model, chosen_name = patched, chosen["name"]
        del patched
    chosen, reason = choose(record["candidates"], served, target)
    record |= {"chosen": chosen["name"], "reason": reason}
    return best_model, record


def run_target(
    model, *, target: float, fp32_bytes: int, shares: tuple[float, ...] | None = None, **plan
) -> tuple[torch.nn.Module, dict]:
    """The plan for the smallest budget among ``shares`` (of ``fp32_bytes``; default :data:`TARGET_SHARES`) that
    meets ``target``: its chosen candidate keeps every served source within ``target`` times dense's perplexity
    and no source not served behind trimming at the same bytes (the guard holds under a target too). Bisection over
    the budgets the model's smallest plan fits, one :func:`run_plan` (``plan``: its keywords) each. Returns the
    chosen model and the kept budget's record, with ``target``, ``target_met`` and ``search`` (each budget tried,
    the candidate chosen there, its worst served ratio and the sources it leaves behind trimming). Where no budget
    meets the target, the largest budget's plan is returned with ``target_met`` false."""
    shares = TARGET_SHARES if shares is None else shares
    v, d = model.get_input_embeddings().weight.shape
    sizes = {k: plan[k] for k in ("bits", "group_size", "band_bits", "special_rows") if k in plan}
    sizes["element_size"] = model.get_input_embeddings().weight.element_size()
    smallest = smallest_plan_bytes(v, d, **sizes)
    budgets = [b for b in sorted({int(s * fp32_bytes) for s in shares}) if smallest <= b < fp32_bytes]
    if not budgets:
        raise FactorEmbedError(
            f"--target: none of the budgets it searches ({', '.join(f'{s:g}' for s in shares)} of the fp32 "
            f"embedding) fits this model's smallest plan ({smallest / fp32_bytes:.2%}); give --max-bytes"
        )
    low, high, kept, search = 0, len(budgets) - 1, None, []
    while low <= high:
        mid = (low + high) // 2
        patched, record = run_plan(model, budget=budgets[mid], fp32_bytes=fp32_bytes, target=target, **plan)
        chosen = chosen_candidate(record)
        worst = worst_served(chosen, plan["served"])
        met = worst <= target and not chosen["worse_than_trim"]  # the guard holds under a target too
        search.append({"budget_share": record["budget_share"], "chosen": record["chosen"], "worst_served": worst})
        search[-1] |= {"band_rows": chosen["band_rows"], "worse_than_trim": chosen["worse_than_trim"], "met": met}
        logger.info(
            "plan for --target %g: %.1f%% -> %s, worst served %.4f",
            target,
            100 * budgets[mid] / fp32_bytes,
            record["chosen"],
            worst,
        )
        if met or kept is None or not kept[1]["target_met"]:  # the smallest that meets it, else the largest tried
            kept = patched, record | {"target_met": met}
        del patched
        low, high = (low, mid - 1) if met else (mid + 1, high)
    patched, record = kept
    return patched, record | {"target": target, "search": sorted(search, key=lambda p: p["budget_share"])}


def chosen_candidate(record: Mapping) -> dict:
    """The record of the candidate the plan kept."""
    return next(c for c in record["candidates"] if c["name"] == record["chosen"])


def _behind(ratio: float, trimmed: float) -> bool:
    """Whether a source not served is worse than trimming at the same bytes (the guard)."""
    return ratio > GUARD_TOLERANCE * trimmed and ratio > GUARD_FLOOR


def describe(record: Mapping) -> list[str]:
    """The plan as lines for the summary: one per candidate, the chosen one marked."""
    lines = [f"plan: {record['budget_bytes']:,} bytes ({record['budget_share']:.1%} of fp32); chose {record['reason']}"]
    if "target" in record:
        tried = ", ".join(
            f"{p['budget_share']:.1%} {p['chosen']} {p['worst_served']:.3f}x"
            + (f" (behind trimming: {', '.join(p['worse_than_trim'])})" if p["worse_than_trim"] else "")
            for p in record["search"]
        )
        met = "met" if record["target_met"] else "NOT met at any budget tried"
        lines.insert(0, f"plan for --target {record['target']:g} (worst served source): {met}; tried {tried}")
    for c in record["candidates"]:
        mark = "*" if c["name"] == record["chosen"] else " "
        ratios = ", ".join(f"{s} {r:.3g}x" for s, r in c["ratio"].items())
        lines.append(f" {mark} {c['name']:<8} {c['share']:.1%} band {c['band_rows']:,} rows: {ratios}")
    trim = record["trim"]
    lines.append(
        f"   trim     {trim['rows']:,} int8 rows: " + ", ".join(f"{s} {r:.3g}x" for s, r in trim["ratio"].items())
    )
    return lines
