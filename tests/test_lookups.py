"""Reading product codes by table lookup (:mod:`hf_factor_embed.layers.lookups`): plain and paired offsets address
the same entries."""

from __future__ import annotations

import torch

from hf_factor_embed.layers.lookups import (
    HeldOffsets,
    can_pair,
    code_offsets,
    held_offset_rows,
    lookup_tables,
    offset_sum,
    pair_offsets,
    unpair_offsets,
)


def _codes(rows: int = 50, subspaces: int = 8, centroids: int = 16) -> torch.Tensor:
    return torch.randint(0, centroids, (rows, subspaces), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_paired_offsets_unpair_to_the_plain_ones():
    codes = _codes()
    paired = pair_offsets(codes, 16)
    assert paired.dtype == torch.int32 and paired.shape == (50, 4)
    assert torch.equal(unpair_offsets(paired, 16), code_offsets(codes, 16))


def test_pair_tables_sum_what_the_plain_tables_sum():
    """Per position and token, the paired lookups' sum is the sum of the token's m entries (two at a time), for
    one position and for several, summed by ``sum`` or by a product with ones."""
    codes, rows = _codes(), torch.tensor([[3, 7, 49], [0, 0, 12]])
    tables = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))  # (n, K, m)
    expected = torch.stack([tables[p, codes[rows[p]].long(), torch.arange(8)].sum(-1) for p in range(2)])
    for paired, offsets in ((False, code_offsets(codes, 16)), (True, pair_offsets(codes, 16))):
        picked = held_offset_rows(offsets, rows)
        for by_matmul in (False, True):
            sums = offset_sum(lookup_tables(tables, paired), picked, by_matmul=by_matmul)
            torch.testing.assert_close(sums, expected)
            one = offset_sum(lookup_tables(tables[:1], paired), picked[:1], by_matmul=by_matmul)
            torch.testing.assert_close(one, expected[:1])


def test_codes_pair_only_where_the_pair_tables_stay_small():
    assert can_pair(128, 32, 256)
    assert not can_pair(128, 32, 512)  # 262,144 entries a pair a step
    assert not can_pair(6, 3, 16)  # the first stage would split a pair


def test_held_offsets_pair_the_first_stage_only():
    """The first stage's subspaces paired, the rest plain; both stages' sums are the token's entries, and the
    plain offsets of every subspace come back for the embedding's rows."""
    codes, rows = _codes(), torch.tensor([[3, 7, 49]])
    tables = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(2))
    entries = tables[0, codes[rows[0]].long(), torch.arange(8)]  # (3, m)
    for paired in (True, False):
        held = HeldOffsets.of(codes, 16, first_subspaces=4, paired=paired)
        assert held.paired == paired and held.first.shape[1] == (2 if paired else 4) and held.rest.shape[1] == 4
        torch.testing.assert_close(held.first_sums(tables, rows), entries[:, :4].sum(-1)[None])
        torch.testing.assert_close(held.rest_sums(tables, rows), entries[:, 4:].sum(-1)[None])
        assert torch.equal(held.plain(rows, 16), code_offsets(codes, 16)[rows])
    assert not HeldOffsets.of(codes, 16, first_subspaces=3, paired=True).paired  # a pair would straddle the stages
