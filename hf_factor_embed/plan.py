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
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch

from .errors import FactorEmbedError

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
#: The tail formats the plan measures: name -> (tail, values per code byte).
TAIL_FORMATS = {
    "lowrank": ("lowrank", None),
    **{f"pq{n}": ("pq", n) for n in (16, 8, 6, 5, 4)},  # a model measures those whose values divide its width
}
#: The share of the size ``band_plan`` spends on exact rows in every candidate (the low-rank tail's rank is the
#: rest); the product-coded tails keep a rank-16 basis whatever the share.
BAND_SHARE = 0.9
#: The budgets a quality target searches, as shares of the fp32 embedding's bytes (those the model's smallest plan
#: fits); quality grows with the budget, so the search bisects: about four plans for these thirteen.
TARGET_SHARES = (0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_max_bytes(value: str | float | int) -> tuple[str, float]:
    """``("share", 0.08)`` for a share of the fp32 embedding (a number in (0, 1)), ``("bytes", 4e7)`` for a size
    (``40MB``, ``38MiB``, ``40000000``)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        value = repr(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise FactorEmbedError(
            f"--max-bytes {value!r} is neither a share of the fp32 embedding's bytes (e.g. 0.08) nor a size "
            f"(e.g. 40MB, 38MiB)"
        )
    number = float(match.group(1))
    if not unit and 0 < number < 1:
        return "share", number
    if number * _UNITS[unit] < 1 or (not unit and number == 1):
        raise FactorEmbedError(f"--max-bytes {value!r}: give a share strictly between 0 and 1, or a size like 40MB")
    return "bytes", number * _UNITS[unit]


def budget_bytes(spec: tuple[str, float], fp32_bytes: int) -> int:
    kind, number = spec
    return int(number * fp32_bytes) if kind == "share" else int(number)


@dataclass(frozen=True)
class Candidate:
    """One way to spend the budget: a tail format and the size knob (``rank``) that fills the budget with it."""

    name: str
    tail: str
    tail_sub_dim: int | None
    rank: int
    band_rows: int
    planned_bytes: int

    def method(self):
        from .factorize.banded import BandedMethod

        return BandedMethod(BAND_SHARE, tail=self.tail, tail_sub_dim=self.tail_sub_dim or 8)


def planned_bytes(
    v: int,
    d: int,
    rank: int,
    tail_format: str,
    *,
    bits: int | None,
    group_size: int | None = None,
    band_bits: int | None = None,
    special_rows: int = 0,
    element_size: int = 4,
    tail_rank: int | None = None,
    exact_columns: int | None = None,
) -> tuple[int, int]:
    """(stored bytes, band rows) of one factorized matrix (a tied pair once) at ``rank`` with ``tail_format``:
    the shapes the layer will hold (:class:`hf_factor_embed.layers.FactorizedLayer`), counted as the checkpoint
    stores them (:func:`hf_factor_embed.quantize.stored_bytes`)."""
    from .config import FactorEmbedConfig
    from .factorize.banded import band_plan
    from .factorize.product import CENTROIDS
    from .patch import set_integer_storage
    from .quantize import stored_bytes

    tail, sub_dim = TAIL_FORMATS[tail_format]
    k, inner = band_plan(v, d, rank, BAND_SHARE)
    k = max(k, special_rows) if k else k
    shapes = {"weight": (v, inner), "basis": (inner, d), "dense_rows": (k, d), "dense_index": (k,)}
    if tail == "pq":
        from .factorize.banded import BandedMethod

        defaults = BandedMethod(tail="pq")
        tail_rank = defaults.tail_rank if tail_rank is None else tail_rank
        exact_columns = defaults.tail_exact_columns if exact_columns is None else exact_columns
        inner, m, c = min(tail_rank, d), d // sub_dim, min(exact_columns, d)
        shapes |= {"weight": (v, inner), "basis": (inner, d), "tail_codes": (v, m)}
        shapes |= {"codebooks": (m, CENTROIDS, sub_dim), "tail_rotation": (d, d)}
        shapes |= {"tail_columns": (c,), "tail_column_values": (v, c)}
    sizes = {"dense_index": 8, "tail_codes": 1, "tail_columns": 8, "tail_column_values": 2}
    config = set_integer_storage(FactorEmbedConfig(), bits, group_size, band_bits)
    total = sum(
        stored_bytes(config, name, shape, sizes.get(name, element_size), band_rows=k)
        for name, shape in shapes.items()
        if k or name not in ("dense_rows", "dense_index")
    )
    return total, k


def candidates(
    v: int,
    d: int,
    budget: int,
    *,
    bits: int | None,
    group_size: int | None = None,
    band_bits: int | None = None,
    special_rows: int = 0,
    element_size: int = 4,
    formats: tuple[str, ...] = tuple(TAIL_FORMATS),
    tail_rank: int | None = None,
    exact_columns: int | None = None,
) -> list[Candidate]:
    """For each tail format, the largest size that fits ``budget`` bytes (formats that cannot fit are left out);
    ``tail_rank`` and ``exact_columns``: the product-coded tail's, where not :class:`BandedMethod`'s defaults."""
    from .patch import largest_saving_rank

    out = []
    sizes = dict(bits=bits, group_size=group_size, band_bits=band_bits, special_rows=special_rows)
    sizes |= dict(element_size=element_size, tail_rank=tail_rank, exact_columns=exact_columns)
    for name in formats_for(d, formats):
        low, high = 0, largest_saving_rank(v, d)  # bytes grow with the rank
        while low < high:
            mid = (low + high + 1) // 2
            fits = planned_bytes(v, d, mid, name, **sizes)[0] <= budget
            low, high = (mid, high) if fits else (low, mid - 1)
        total, rows = planned_bytes(v, d, max(low, 1), name, **sizes)
        if low >= 1 and rows:  # a candidate without a band would lose the special tokens' exact rows
            out.append(Candidate(name, *TAIL_FORMATS[name], rank=low, band_rows=rows, planned_bytes=total))
    return out


def formats_for(d: int, formats=tuple(TAIL_FORMATS)) -> list[str]:
    """The tail formats a width-``d`` embedding can take (product codes whose values a byte divide ``d``)."""
    return [name for name in formats if not TAIL_FORMATS[name][1] or d % TAIL_FORMATS[name][1] == 0]


def smallest_plan_bytes(v: int, d: int, **sizes) -> int:
    """The fewest bytes any candidate needs (the smallest size with a band, which holds at least the special tokens'
    rows, and the smallest tail); ``sizes``: the storage keywords of :func:`planned_bytes`."""
    from .patch import largest_saving_rank

    def smallest(name: str) -> int:
        low, high = 1, largest_saving_rank(v, d)  # a band appears once the rank leaves room for it
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if planned_bytes(v, d, mid, name, **sizes)[1] else (mid + 1, high)
        return planned_bytes(v, d, low, name, **sizes)[0]

    return min(smallest(name) for name in formats_for(d))


def check_budget(budget: int, v: int, d: int, fp32_bytes: int, **sizes) -> None:
    """A budget that no candidate fits is one line naming the smallest that does."""
    smallest = smallest_plan_bytes(v, d, **sizes)
    if budget < smallest:
        raise FactorEmbedError(
            f"--max-bytes allows {budget:,} bytes ({budget / fp32_bytes:.2%} of the fp32 embedding), below the "
            f"{smallest:,} ({smallest / fp32_bytes:.2%}) that the smallest plan needs (a band of the special tokens' "
            f"rows and the smallest tail); give at least {math.ceil(1000 * smallest / fp32_bytes) / 1000:g}"
        )
    if budget >= fp32_bytes:
        raise FactorEmbedError(
            f"--max-bytes allows {budget:,} bytes, no fewer than the fp32 embedding's {fp32_bytes:,}: nothing to "
            f"compress; give a share below 1 (e.g. 0.08)"
        )


def check_plan_arguments(
    max_bytes, serve, method, band_share, tail, tail_sub_dim, target=None
) -> tuple[str, float] | None:
    """The parsed budget (``("share", 0.08)``, ``("bytes", 4e7)``) or quality target (``("target", 1.02)``: a
    ``target`` with served sources, the banded method and none of its settings), or None for neither (a ``target``
    then searches the rank: :mod:`hf_factor_embed.rank_search`); what the plan cannot go with is refused before
    anything loads."""
    if max_bytes is None:
        planned_target = target is not None and serve is not None and method in (None, "banded")
        if not planned_target or band_share or tail or tail_sub_dim:
            return None
        check_target(target)
        return "target", float(target)
    spec = parse_max_bytes(max_bytes)
    if serve is None:
        raise FactorEmbedError(
            "--max-bytes measures candidates on the held-back part of each served source: name them with "
            "--calibration (e.g. --calibration pydoc --calibration lang:de), or give --rank"
        )
    if method not in (None, "banded"):
        raise FactorEmbedError(f"--max-bytes plans the banded method; --method {method} needs --rank")
    chosen = [n for n, v in (("--band-share", band_share), ("--tail", tail), ("--tail-sub-dim", tail_sub_dim)) if v]
    if chosen:
        raise FactorEmbedError(
            f"{', '.join(chosen)}: the plan (--max-bytes) picks the band and the tail by measurement; give --rank to "
            f"set them yourself"
        )
    return spec


def check_target(target) -> None:
    """``--target`` is a perplexity ratio to dense: a number >= 1 (for the plan and for the rank search alike)."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or target < 1:
        raise FactorEmbedError(f"--target {target!r} is a perplexity ratio to the dense model: a number >= 1")


def check_budget_fits(spec, shape: tuple[int, int, bool] | None, bits, group_size, band_bits) -> None:
    """A budget no candidate fits is refused from the model's shape (``(V, d, tied)`` from its config, read by
    :func:`hf_factor_embed.arguments.embedding_shape`; None: checked once the model loads), before it loads."""
    if shape is None or spec[0] == "target":
        return
    v, d, tied = shape
    matrices = 1 if tied else 2
    fp32 = matrices * v * d * 4
    sizes = dict(bits=bits, group_size=group_size, band_bits=band_bits)
    check_budget(budget_bytes(spec, fp32) // matrices, v, d, fp32 // matrices, **sizes)


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
        stored = stored_bytes_of(patched)
        if stored > budget:  # the count and the layers disagree: a bug, never a silent overrun
            raise RuntimeError(f"plan {candidate.name}: planned {candidate.planned_bytes:,} bytes, stored {stored:,}")
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
