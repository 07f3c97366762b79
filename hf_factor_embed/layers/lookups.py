"""Reading a product-coded tail's codes by table lookup: per position, the rotated hidden state's dot products with
each subspace's centroids (the tables), then per listed token the sum of the entries its codes pick.

Two ways to address the entries. Plain offsets: ``code + subspace x K`` into the (K, m) tables read column by
column, one lookup a subspace. Paired offsets: ``pair x K^2 + a x K + b`` into *pair tables*, entry (a, b) of pair
j being ``tables[a, 2j] + tables[b, 2j + 1]``: one lookup reads two subspaces, for K^2 additions a pair a step
(Gemma-3's shortlist pairs its first stage's 32 subspaces of 256 centroids: 1M additions, 4.2 MB of tables). A
runtime whose gathers are slow and whose elementwise adds are fast (ExecuTorch: ``index_select`` in its portable
kernels, the adds in XNNPACK) reads half as many entries; transformers and ONNX Runtime read plain offsets or the
codes themselves.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Centroids a subspace may have for its codes to be paired: a pair's table has K^2 entries a step.
MAX_PAIRED_CENTROIDS = 256


class HeldOffsets(NamedTuple):
    """A shortlist head's codes held ready as int32 offsets (no step casts codes to an index), split after the
    first stage's s1 subspaces: ``first`` (rows, s1, or s1 / 2 where ``paired``: :func:`pair_offsets`) and
    ``rest`` (rows, m - s1: plain :func:`code_offsets` of the other subspaces, into all m columns' tables).

    Only the first stage pairs: its lookups are many (Gemma-3: 65,536 tokens x 32 subspaces) and its pair tables
    small (16 pairs, 4.2 MB); paired, the second stage's (8,192 x 96) read 12.6 MB of tables a step at random,
    and ExecuTorch's head step went from 26.2 to 30.6 ms (``benchmarks/head_step.py``)."""

    first: torch.Tensor
    rest: torch.Tensor
    paired: bool = False

    def first_sums(self, tables: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(n, k)``: per position (its tables (n, K, m)) and listed code row (``rows`` (n, k)), the sum of the
        first stage's entries."""
        subspaces = self.first.shape[1] * (2 if self.paired else 1)
        flat = lookup_tables(tables[..., :subspaces], self.paired)
        return offset_sum(flat, held_offset_rows(self.first, rows), by_matmul=True)

    def rest_sums(self, tables: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """As :meth:`first_sums`, the other subspaces."""
        return offset_sum(lookup_tables(tables), held_offset_rows(self.rest, rows), by_matmul=True)

    def plain(self, rows: torch.Tensor, centroids: int) -> torch.Tensor:
        """``(*rows.shape, m)``: code ``rows``' plain offsets, every subspace's."""
        first = held_offset_rows(self.first, rows)
        if self.paired:
            first = unpair_offsets(first, centroids)
        return torch.cat([first, held_offset_rows(self.rest, rows)], dim=-1)

    @classmethod
    def of(cls, codes: torch.Tensor, centroids: int, first_subspaces: int, paired: bool) -> HeldOffsets:
        """``codes`` (rows, m) held, the first ``first_subspaces`` paired where ``paired`` and :func:`can_pair`."""
        paired = paired and can_pair(codes.shape[1], first_subspaces, centroids)
        plain = code_offsets(codes, centroids)
        first = pair_offsets(codes[:, :first_subspaces], centroids) if paired else plain[:, :first_subspaces]
        return cls(first.contiguous(), plain[:, first_subspaces:].contiguous(), paired)


def can_pair(subspaces: int, first_subspaces: int, centroids: int) -> bool:
    """Whether codes of ``subspaces`` (the first stage reading ``first_subspaces``) can be held paired."""
    return subspaces % 2 == 0 and first_subspaces % 2 == 0 and centroids <= MAX_PAIRED_CENTROIDS


def code_offsets(codes: torch.Tensor, centroids: int) -> torch.Tensor:
    """``codes`` (..., s) as int32 flat offsets into one position's (K, s) lookup tables read column by column:
    ``codes[..., j] + j * K`` (several positions' starts are added by :func:`offset_sum`)."""
    return codes.int() + torch.arange(codes.shape[-1], dtype=torch.int32, device=codes.device) * centroids


def pair_offsets(codes: torch.Tensor, centroids: int) -> torch.Tensor:
    """``codes`` (rows, s), s even, as int32 offsets into the pair tables (:func:`lookup_tables`), one a pair of
    subspaces: ``j * K^2 + codes[:, 2j] * K + codes[:, 2j + 1]``, ``(rows, s / 2)``."""
    codes = codes.int()
    pairs = torch.arange(codes.shape[1] // 2, dtype=torch.int32, device=codes.device) * centroids**2
    return codes[:, 0::2] * centroids + codes[:, 1::2] + pairs


def unpair_offsets(offsets: torch.Tensor, centroids: int) -> torch.Tensor:
    """Paired offsets ``(..., s / 2)`` back to plain ones ``(..., s)`` (an embedding's rows read the codebooks by
    them). Floor division and remainder: ``>>`` and ``&`` are not in core ATen (ExecuTorch refuses them)."""
    pair = torch.div(offsets, centroids**2, rounding_mode="floor")
    within = offsets - pair * centroids**2
    first_code = torch.div(within, centroids, rounding_mode="floor")
    second_code = within - first_code * centroids
    first = 2 * pair * centroids + first_code
    return torch.stack([first, first + centroids + second_code - first_code], dim=-1).flatten(-2)


def held_offset_rows(offsets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(*rows.shape, s)``: the held ``offsets``' (code rows, s) rows ``rows``, one flat ``index_select``."""
    return offsets.index_select(0, rows.flatten()).view(*rows.shape, -1)


def lookup_tables(tables: torch.Tensor, paired: bool = False) -> torch.Tensor:
    """``(n, entries)``: each position's tables (n, K, m) flattened as offsets address them: column by column
    (:func:`code_offsets`), or as pair tables (:func:`pair_offsets`)."""
    n, centroids, subspaces = tables.shape
    columns = tables.transpose(1, 2)  # (n, m, K)
    if not paired:
        return columns.reshape(n, -1)
    pairs = columns.reshape(n, subspaces // 2, 2, centroids)
    return (pairs[:, :, 0, :, None] + pairs[:, :, 1, None, :]).reshape(n, -1)


def offset_sum(flat_tables: torch.Tensor, offsets: torch.Tensor, by_matmul: bool = False) -> torch.Tensor:
    """``(n, k)``: per position and listed token, the sum of its position's ``flat_tables`` (n, entries,
    :func:`lookup_tables`) at ``offsets`` (n, k, s).

    ``by_matmul``: the sum as a product with a vector of ones (ExecuTorch's portable ``mm`` adds Gemma-3's
    65,536 x 16 entries in 0.45 ms, its ``sum`` in 1.34); the same terms, added in another order."""
    n, entries = flat_tables.shape
    if not (isinstance(n, int) and n == 1):  # each position reads its own tables (a traced batch may be any size)
        starts = torch.arange(n, dtype=torch.int64, device=offsets.device) * entries
        offsets = offsets.long() + starts.view(n, 1, 1)
    picked = flat_tables.reshape(-1).index_select(0, offsets.flatten()).view(offsets.shape)
    if by_matmul:
        return (picked @ torch.ones(picked.shape[-1], 1, dtype=picked.dtype, device=picked.device)).squeeze(-1)
    return picked.sum(-1)


def gather_entries(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``tables.gather(1, codes)`` for ``codes`` of any integer type (tables (n, K, m), codes (n, k, m) -> (n, k, m)).

    In an ONNX export the codes become int32 indices of a ``GatherElements`` (ONNX takes int32 indices, torch's
    gather int64 only): ONNX Runtime casts uint8 to int32 and gathers by it faster than by int64 (Gemma-3's first
    stage, 65,536 x 32 codes: a session script's profile, the cast 3.56 -> 0.98 ms and the gather 6.59 -> 2.94 ms
    beside a test run). Elsewhere torch's gather, the same entries."""
    if torch.onnx.is_in_onnx_export():
        index = codes.to(torch.int32)
        return torch.onnx.ops.symbolic(
            "::GatherElements", (tables, index), {"axis": 1}, dtype=tables.dtype, shape=index.shape, version=13
        )
    return tables.gather(1, codes.long())
