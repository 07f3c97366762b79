"""The ranks a V x d matrix can be factorized at: the size of a rank, and the ranks that save anything."""

from __future__ import annotations

from ..errors import FactorEmbedError
from ..options import is_whole


def rank_for_budget(budget: float, rows: int, cols: int) -> int:
    """The largest rank whose two factors hold at most ``budget`` (a share) of the matrix's parameters."""
    return max(1, int(budget * rows * cols // (rows + cols)))


def largest_saving_rank(v: int, d: int) -> int:
    """The largest rank r whose factors (r*(V+d) values) are fewer than the dense V x d matrix's."""
    return max(1, (v * d - 1) // (v + d))


def check_rank(rank, v: int, d: int, role: str = "input") -> None:
    """Refuse a rank that is not an integer, or whose factors would be no smaller than the dense matrix: such a
    "compressed" checkpoint is larger than the original (the banded method spends the size on exact rows)."""
    top = largest_saving_rank(v, d)
    if not is_whole(rank) or not 1 <= rank <= top:
        keeps = (
            f"; rank {rank} would keep {rank * (v + d) / (v * d):.1%} of its parameters"
            if is_whole(rank) and rank > top
            else ""
        )
        raise FactorEmbedError(
            f"rank={rank!r} for the {role} embedding ({v} x {d}) must be an integer in 1..{top}, the ranks whose "
            f"factors are smaller than the dense matrix{keeps} (budget=SHARE picks a rank for you)."
        )
