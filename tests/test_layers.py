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


def _column_major(t: torch.Tensor) -> bool:
    return t.stride() == (1, t.shape[0])


def test_a_and_the_band_are_stored_column_major_and_saved_row_major(tmp_path):
    from conftest import tiny_llama
    from transformers import AutoModelForCausalLM

    import hf_factor_embed as hfe

    model = hfe.patch_model(tiny_llama(), rank=16, calibration=torch.randint(1, 320, (2000,)))
    layer = model.model.embed_tokens
    assert _column_major(layer.weight) and _column_major(layer.dense_rows)
    assert torch.equal(layer.dense_index, layer.dense_index.sort().values)  # the head writes columns in order
    state = model.state_dict()
    assert all(t.is_contiguous() for t in state.values())
    # one row-major copy for the tied pair: savers find the tie by shared storage
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    assert model.state_dict(keep_vars=True)["model.embed_tokens.weight"] is layer.weight  # Parameters stay as they are

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert _column_major(reloaded.model.embed_tokens.weight) and _column_major(reloaded.model.embed_tokens.dense_rows)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    ids = torch.randint(1, 320, (2, 9))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_the_layouts_give_the_same_head_and_gradients():
    emb, head = _layers()
    h = torch.randn(3, 16)
    row_major = FactorizedLMHead(50, 16, 6, bias=True)
    with torch.no_grad():
        row_major.weight.data = head.weight.detach().contiguous()
        row_major.basis.copy_(head.basis)
        row_major.bias.copy_(head.bias)
    assert not _column_major(row_major.weight) and _column_major(head.weight)
    torch.testing.assert_close(head(h), row_major(h))
    head(h).square().sum().backward()
    row_major(h).square().sum().backward()
    torch.testing.assert_close(head.weight.grad, row_major.weight.grad, rtol=1e-4, atol=1e-4)
