"""The plan: spend a byte budget where the served text says it buys most, and guard what is not served.

A budget (``--max-bytes 0.08``: 8% of the fp32 embedding's bytes; ``--max-bytes 40MB``: a size) can be spent on
many exact rows and a small low-rank tail, or on fewer rows and a tail in which every token keeps a row of its own
(product codes, one byte per 16, 8, 6, 5 or 4 values: :mod:`hf_factor_embed.factorize.product`). Which is better depends
on the model and on what is served, so the plan measures instead of guessing:

1. For each tail format, the largest band that fits the budget, from the shapes the layers will hold and the bytes
   the checkpoint stores for them (:func:`planned_bytes`, the count ``compress`` reports).
2. Each candidate is factorized from the same calibration statistics and measured: perplexity and KL divergence
   from dense (with the same-top share; :mod:`hf_factor_embed.measure.fidelity`) on the held-back part of every
   served source, and on every measured source not served.
3. Hard vocabulary trimming at the same bytes (vocabtrimmer: as many int8 rows as fit, ranked by the same scores)
   is measured on the sources not served: the guard (by perplexity: a trimmed vocabulary is infinitely far from
   dense in KL divergence).
4. The choice (:func:`choose`): served text is judged by KL divergence (by the perplexity ratio where none was
   measured; :func:`metric_of`). The candidates within ``SERVED_TOLERANCE`` of the best on the served sources
   (5% in perplexity, ln 1.05 nats in KL divergence; the worst served source decides) are eligible. Among them,
   the one worse than trimming on the fewest sources not served (past 2% of trimming's perplexity and past 5% of
   dense's: the guard); then those within ``SERVED_PREFERENCE`` (2%, ln 1.02) of the best on served text before
   the others; then the best mean over the sources not served; then the best on served text. Measured on
   Gemma-3-270M at 8% with English served (Python's reference, Debian changelogs, the model's own text), it keeps
   product codes of 5 values a byte: served text at 0.99x-1.12x dense's perplexity (KL divergence 0.023-0.150)
   and the languages not served at 1.4x-2.3x, where the low-rank tail at the same bytes is 34x-7.6e3x and
   trimming 178x-2.5e3x (benchmarks/RESULTS.md, *plan* and *fidelity*).

A quality target instead of a budget (``--target 1.02``: every served source within 2% of dense's perplexity on its
held-back part; ``--target-kld 0.01``: within 0.01 nats of KL divergence from dense) is a search over budgets
(:func:`run_target`): the plan runs at budgets from :data:`TARGET_SHARES`, bisecting, and the smallest budget whose
choice meets the target with the guard kept is kept, its candidates chosen among those that meet it.

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
    max_bytes, serve, method, band_share, tail, tail_sub_dim, target=None, target_kld=None
) -> tuple[str, float] | None:
    """The parsed budget (``("share", 0.08)``, ``("bytes", 4e7)``) or quality target (``("target", 1.02)``: a
    ``target`` with served sources, the banded method and none of its settings; ``("target_kld", 0.01)`` the same
    in KL divergence), or None for neither (a ``target`` then searches the rank:
    :mod:`hf_factor_embed.pipeline.rank_search`); what the plan cannot go with is refused before anything loads."""
    if target_kld is not None:
        if max_bytes is not None or target is not None:
            raise FactorEmbedError("--target-kld is a size of its own: give it without --max-bytes or --target")
        if serve is None or method not in (None, "banded"):
            raise FactorEmbedError(
                "--target-kld is measured on served sources' held-back parts by the plan: name them with "
                "--calibration (e.g. --calibration pydoc), or give --target for a rank search"
            )
        if any(x is not None for x in (band_share, tail, tail_sub_dim)):
            raise FactorEmbedError("--target-kld: the plan picks the band and the tail; give --rank to set them")
        return "target_kld", float(target_kld)
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


def metric_of(measured: list[Mapping]) -> str:
    """What the plan judges served text by: "kld" (KL divergence from dense) where every candidate carries it for
    every source it was measured on, else "ratio" (perplexity to dense's)."""
    return (
        "kld"
        if measured and all("fidelity" in c and set(c["fidelity"]) >= set(c["ratio"]) for c in measured)
        else "ratio"
    )


def judged_by(measured: list[Mapping], target_kld: float | None = None) -> str:
    """The figure :func:`choose` judges served text by: KL divergence under a ``target_kld``, else
    :func:`metric_of` the candidates."""
    return "kld" if target_kld is not None else metric_of(measured)


def worth(candidate: Mapping, source: str, metric: str) -> float:
    """A candidate's figure on one source: its KL divergence from dense, or its perplexity ratio to dense."""
    return candidate["fidelity"][source]["kld"] if metric == "kld" else candidate["ratio"][source]


def worst_served(candidate: Mapping, served: list[str], metric: str = "ratio") -> float:
    """A candidate's figure on its worst served source (none served: dense's own, 1.0 or 0.0)."""
    return max((worth(candidate, s, metric) for s in served), default=0.0 if metric == "kld" else 1.0)


def choose(
    measured: list[dict], served: list[str], target: float | None = None, target_kld: float | None = None
) -> tuple[dict, str]:
    """The chosen candidate's record and the reason, from records with ``ratio`` (source -> ratio to dense),
    ``fidelity`` (source -> KL divergence from dense and same-top; where measured) and ``worse_than_trim`` (sources
    not served past :data:`GUARD_TOLERANCE` of trimming: the guard stays on perplexity, since a trimmed vocabulary
    is infinitely far from dense in KL divergence wherever dense gives a trimmed token any mass).

    Served text is judged by KL divergence where every candidate carries it (:func:`metric_of`), else by the
    perplexity ratio; a ratio's tolerances become KL divergence ones through the log (5% more perplexity is
    ln 1.05 = 0.049 nats more cross-entropy). With a ``target`` (a perplexity ratio) or ``target_kld`` the
    candidates that meet it on every served source are eligible (where one does), and the user's target replaces
    the preference for the best on served text."""
    metric = judged_by(measured, target_kld)
    goal = target_kld if target_kld is not None else target
    tolerance, preference = (
        (math.log1p(SERVED_TOLERANCE), math.log1p(SERVED_PREFERENCE))
        if metric == "kld"
        else (SERVED_TOLERANCE, SERVED_PREFERENCE)
    )

    def worst(c):
        return worst_served(c, served, metric)

    def unserved_mean(c):
        figures = [worth(c, s, metric) for s in c["ratio"] if s not in served]
        if metric == "kld":
            return sum(figures) / len(figures) if figures else 0.0
        logs = [math.log(max(r, 1e-9)) for r in figures]
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    best = min(worst(c) for c in measured)
    meeting = [c for c in measured if goal is not None and worst(c) <= goal]
    near = meeting or [c for c in measured if worst(c) <= best + tolerance]
    chosen = min(
        near,
        key=lambda c: (
            len(c["worse_than_trim"]),
            not meeting and worst(c) > best + preference,
            unserved_mean(c),
            worst(c),
        ),
    )
    return chosen, _reason(
        chosen, metric, worst(chosen), best, f"{len(near)} of {len(measured)}", meeting and goal, unserved_mean(chosen)
    )


def _reason(chosen: dict, metric: str, worst: float, best: float, near: str, goal, unserved: float) -> str:
    if metric == "kld":
        figure, eligible = (
            "KL divergence {:.4f} from dense",
            f"within KL divergence {goal:g}" if goal else "within ln 1.05 of it",
        )
        over = f"and KL divergence {unserved:.4f} over them (mean)"
    else:
        figure, eligible = (
            "{:.3f}x dense",
            f"within {goal:g}x dense" if goal else f"within {SERVED_TOLERANCE:.0%} of it",
        )
        over = f"and {unserved:.3f}x dense over them (geometric mean)"
    behind = chosen["worse_than_trim"]
    return (
        f"{chosen['name']}: worst served source {figure.format(worst)} (best of all: {figure.format(best)}; "
        f"{near} candidates {eligible}); worse than trimming at equal bytes on {len(behind)} sources not served "
        f"{'(' + ', '.join(behind) + ') ' if behind else ''}{over}"
    )


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
    target_kld: float | None = None,
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
        figures = {n: f if isinstance(f, Mapping) else {"perplexity": f} for n, f in measure(patched).items()}
        perplexity = {n: f["perplexity"] for n, f in figures.items()}
        ratio = ratios(perplexity)
        worse = sorted(s for s, r in ratio.items() if s not in served and s in trim and _behind(r, trim[s]))
        entry = {**asdict(candidate), "stored_bytes": stored, "share": round(stored / fp32_bytes, 4)}
        entry |= {"perplexity": perplexity, "ratio": ratio, "worse_than_trim": worse}
        fidelity = {n: {k: v for k, v in f.items() if k != "perplexity"} for n, f in figures.items()}
        if any(fidelity.values()):  # KL divergence and same-top per source, where dense's reference was kept
            entry["fidelity"] = fidelity
        record["candidates"].append(entry)
        logger.info("plan %s: %s", candidate.name, {k: round(r, 3) for k, r in ratio.items()})
        chosen, _ = choose(record["candidates"], served, target, target_kld)
        if chosen["name"] != chosen_name:  # keep only the best model so far: one extra copy in memory
            best_model, chosen_name = patched, chosen["name"]
        del patched
    chosen, reason = choose(record["candidates"], served, target, target_kld)
    record |= {"chosen": chosen["name"], "reason": reason, "judged_by": judged_by(record["candidates"], target_kld)}
    return best_model, record


def run_target(
    model,
    *,
    target: float | None = None,
    target_kld: float | None = None,
    fp32_bytes: int,
    shares: tuple[float, ...] | None = None,
    **plan,
) -> tuple[torch.nn.Module, dict]:
    """The plan for the smallest budget among ``shares`` (of ``fp32_bytes``; default :data:`TARGET_SHARES`) that
    meets ``target`` (or ``target_kld``, a KL divergence from dense): its chosen candidate keeps every served source
    within ``target`` times dense's perplexity (or within ``target_kld``)
    and no source not served behind trimming at the same bytes (the guard holds under a target too). Bisection over
    the budgets the model's smallest plan fits, one :func:`run_plan` (``plan``: its keywords) each. Returns the
    chosen model and the kept budget's record, with ``target``, ``target_met`` and ``search`` (each budget tried,
    the candidate chosen there, its worst served ratio and the sources it leaves behind trimming). Where no budget
    meets the target, the largest budget's plan is returned with ``target_met`` false."""
    if (target is None) == (target_kld is None):
        raise ValueError("run_target takes one of target and target_kld")
    goal, option = (target, "target") if target is not None else (target_kld, "target-kld")
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
        goals = {"target": target, "target_kld": target_kld}
        patched, record = run_plan(model, budget=budgets[mid], fp32_bytes=fp32_bytes, **goals, **plan)
        chosen = chosen_candidate(record)
        worst = worst_served(chosen, plan["served"], "kld" if target_kld is not None else "ratio")
        met = worst <= goal and not chosen["worse_than_trim"]  # the guard holds under a target too
        search.append({"budget_share": record["budget_share"], "chosen": record["chosen"], "worst_served": worst})
        search[-1] |= {"band_rows": chosen["band_rows"], "worse_than_trim": chosen["worse_than_trim"], "met": met}
        logger.info(
            "plan for --%s %g: %.1f%% -> %s, worst served %.4f",
            option,
            goal,
            100 * budgets[mid] / fp32_bytes,
            record["chosen"],
            worst,
        )
        if met or kept is None or not kept[1]["target_met"]:  # the smallest that meets it, else the largest tried
            kept = patched, record | {"target_met": met}
        del patched
        low, high = (low, mid - 1) if met else (mid + 1, high)
    patched, record = kept
    goal_record = {"target_kld": target_kld} if target_kld is not None else {"target": target}
    return patched, record | goal_record | {"search": sorted(search, key=lambda p: p["budget_share"])}


def chosen_candidate(record: Mapping) -> dict:
    """The record of the candidate the plan kept."""
    return next(c for c in record["candidates"] if c["name"] == record["chosen"])


def _behind(ratio: float, trimmed: float) -> bool:
    """Whether a source not served is worse than trimming at the same bytes (the guard)."""
    return ratio > GUARD_TOLERANCE * trimmed and ratio > GUARD_FLOOR


def describe(record: Mapping) -> list[str]:
    """The plan as lines for the summary: one per candidate, the chosen one marked."""
    lines = [f"plan: {record['budget_bytes']:,} bytes ({record['budget_share']:.1%} of fp32); chose {record['reason']}"]
    if "target" in record or "target_kld" in record:
        kld = "target_kld" in record
        tried = ", ".join(
            f"{p['budget_share']:.1%} {p['chosen']} "
            + (f"{p['worst_served']:.4f}" if kld else f"{p['worst_served']:.3f}x")
            + (f" (behind trimming: {', '.join(p['worse_than_trim'])})" if p["worse_than_trim"] else "")
            for p in record["search"]
        )
        met = "met" if record["target_met"] else "NOT met at any budget tried"
        goal = f"--target-kld {record['target_kld']:g}" if kld else f"--target {record['target']:g}"
        lines.insert(0, f"plan for {goal} (worst served source): {met}; tried {tried}")
    for c in record["candidates"]:
        mark = "*" if c["name"] == record["chosen"] else " "
        ratios = ", ".join(
            f"{s} {r:.3g}x" + (f" KL {c['fidelity'][s]['kld']:.3g}" if s in c.get("fidelity", {}) else "")
            for s, r in c["ratio"].items()
        )
        lines.append(f" {mark} {c['name']:<8} {c['share']:.1%} band {c['band_rows']:,} rows: {ratios}")
    trim = record["trim"]
    lines.append(
        f"   trim     {trim['rows']:,} int8 rows: " + ", ".join(f"{s} {r:.3g}x" for s, r in trim["ratio"].items())
    )
    return lines
