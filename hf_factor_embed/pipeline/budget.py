"""The plan's sizes: a byte budget parsed, and for each tail format the largest layer that fits it.

A budget (``--max-bytes 0.08``: 8% of the fp32 embedding's bytes; ``--max-bytes 40MB``: a size) is spent on a
candidate per tail format (:data:`TAIL_FORMATS`: a low-rank tail, product codes of 16, 8, 6, 5 or 4 values a byte):
the largest size whose layout (:class:`~hf_factor_embed.layers.layout.LayerLayout`, the one the layer will hold)
fits, counted as the checkpoint stores it. :mod:`.plan` measures the candidates and chooses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import FactorEmbedConfig
from ..errors import FactorEmbedError
from ..factorize.ranks import largest_saving_rank
from ..options import DEFAULT_TAIL_SUB_DIM

#: The tail formats the plan measures: name -> (tail, values per code byte).
TAIL_FORMATS = {
    "lowrank": ("lowrank", None),
    **{f"pq{n}": ("pq", n) for n in (16, 8, 6, 5, 4)},  # a model measures those whose values divide its width
}
#: The share of a candidate's size spent on exact rows (the low-rank tail's rank is the rest; the product-coded
#: tails keep a rank-16 basis whatever the share). Not ``--band-share``'s default (0.3, for a rank the user picks):
#: here the share only maps the size knob the plan searches onto rows, and the budget decides how many; at byte
#: budgets with integer factors the band is where the served text's quality comes from (benchmarks/RESULTS.md,
#: *plan*).
BAND_SHARE = 0.9
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_max_bytes(value: str | float | int) -> tuple[str, float]:
    """``("share", 0.08)`` for a share of the fp32 embedding (a number in (0, 1)), ``("bytes", 4e7)`` for a size
    (``40MB``, ``38MiB``, ``40000000``)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)):
        value = repr(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise FactorEmbedError(
            f"--max-bytes {value!r} is neither a share of the fp32 embedding's bytes (e.g. 0.08) nor a size "
            f"(e.g. 40MB, 38MiB)"
        )
    number = float(match.group(1))
    if not unit and 0 < number < 1:
        return "share", number
    if not unit and number != int(number):
        raise FactorEmbedError(
            f"--max-bytes {value!r}: a share is below 1 (e.g. 0.08), a size is whole bytes or has a unit (e.g. 40MB)"
        )
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
        return candidate_method(self.name)


def candidate_method(tail_format: str, tail_rank: int | None = None, exact_columns: int | None = None):
    """The banded method a candidate of ``tail_format`` factorizes with (``tail_rank``, ``exact_columns``: the
    product-coded tail's, where not the method's defaults)."""
    from ..factorize.banded import BandedMethod

    tail, sub_dim = TAIL_FORMATS[tail_format]
    extra = {"tail_rank": tail_rank, "tail_exact_columns": exact_columns}
    extra = {k: v for k, v in extra.items() if v is not None and tail == "pq"}
    return BandedMethod(BAND_SHARE, tail=tail, tail_sub_dim=sub_dim or DEFAULT_TAIL_SUB_DIM, **extra)


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
    """(stored bytes, band rows) of one factorized matrix (a tied pair once) at ``rank`` with ``tail_format``: the
    layout the method will give the layer (:meth:`BandedMethod.layout`), counted as the checkpoint stores it
    (:func:`hf_factor_embed.quantizer.sizes.layout_bytes`, the count ``compress`` reports)."""
    from ..quantizer.sizes import layout_bytes

    layout = candidate_method(tail_format, tail_rank, exact_columns).layout(v, d, rank, special_rows)
    config = FactorEmbedConfig().set_storage(bits, group_size, band_bits)
    return layout_bytes(layout, config, element_size), layout.dense_rows


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


def check_budget_fits(spec, shape: tuple[int, int, bool] | None, bits, group_size, band_bits) -> None:
    """A budget no candidate fits is refused from the model's shape (``(V, d, tied)`` from its config, read by
    :func:`hf_factor_embed.models.names.embedding_shape`; None: checked once the model loads), before it loads."""
    if shape is None or spec[0] in ("target", "target_kld"):
        return
    v, d, tied = shape
    matrices = 1 if tied else 2
    fp32 = matrices * v * d * 4
    sizes = dict(bits=bits, group_size=group_size, band_bits=band_bits)
    check_budget(budget_bytes(spec, fp32) // matrices, v, d, fp32 // matrices, **sizes)
