import pytest
import torch
from torch import nn

from hf_factor_embed import FactorizedEmbedding, FactorizedLMHead


def _layers(v=50, d=16, r=6, bias=True):
    torch.manual_seed(0)
    emb = FactorizedEmbedding(v, d, r, padding_idx=0, embed_scale=2.0)
    head = FactorizedLMHead(v, d, r, bias=bias)
    for p in (*emb.parameters(), *head.parameters()):
        nn.init.normal_(p)
    return emb, head


def test_embedding_forward_is_scaled_lookup_of_a_times_b():
    emb, _ = _layers()
    ids = torch.tensor([[0, 3, 49]])
    assert torch.allclose(emb(ids), 2.0 * (emb.weight @ emb.basis)[ids], atol=1e-5)
    assert emb.base_shape == (50, 16)


def test_padding_row_gets_no_gradient():
    emb, _ = _layers()
    emb(torch.tensor([[0, 1, 0]])).sum().backward()
    assert torch.count_nonzero(emb.weight.grad[0]) == 0
    assert torch.count_nonzero(emb.weight.grad[1]) > 0


def test_head_is_two_matmuls_equal_to_dense_projection_with_bias():
    _, head = _layers()
    h = torch.randn(3, 16)
    expected = h @ (head.weight @ head.basis).T + head.bias
    assert torch.allclose(head(h), expected, atol=1e-4)
    dense = head.to_dense()
    assert isinstance(dense, nn.Linear) and torch.allclose(dense(h), head(h), atol=1e-4)


def test_tied_head_shares_the_parameter_objects():
    emb, head = _layers(bias=False)
    head.tie_to(emb)
    assert head.weight is emb.weight and head.basis is emb.basis
    assert len({id(p) for p in (*emb.parameters(), *head.parameters())}) == 2


def test_to_dense_embedding_matches():
    emb, _ = _layers()
    dense = emb.to_dense()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(dense(ids) * 2.0, emb(ids), atol=1e-5)


@pytest.mark.parametrize("rank", [0, 17, -1])
def test_rank_out_of_range_is_refused(rank):
    with pytest.raises(ValueError, match="outside 1..min"):
        FactorizedEmbedding(50, 16, rank)


def test_set_factors_checks_shapes():
    emb, _ = _layers()
    with pytest.raises(ValueError, match="do not match"):
        emb.set_factors(torch.zeros(50, 5), torch.zeros(5, 16))
