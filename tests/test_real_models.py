"""The same guarantees on real pretrained models: SmolLM2-135M (LLaMA, tied) and all-MiniLM-L6-v2 (BERT)."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def smollm2_ids(smollm2_dir, real_text):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return tok(real_text[:4000], return_tensors="pt").input_ids[:, :128]


def _fresh(model):
    import copy

    return copy.deepcopy(model)


def test_smollm2_round_trip(smollm2, smollm2_ids, tmp_path):
    model = hfe.patch_model(_fresh(smollm2), rank=128)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        expected = model(smollm2_ids).logits
    model.save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size < 4 * (134_515_008 - 49152 * 576 + 128 * (49152 + 576)) + 100_000
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.basis is reloaded.model.embed_tokens.basis
    with torch.no_grad():
        assert torch.equal(reloaded(smollm2_ids).logits, expected)
    out = reloaded.generate(smollm2_ids[:, :8], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_smollm2_integer_factors_round_trip(smollm2, smollm2_ids, tmp_path):
    from safetensors import safe_open

    model = hfe.patch_model(_fresh(smollm2), rank=128, bits=8)
    with torch.no_grad():
        expected = model(smollm2_ids).logits
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        factor_bytes = sum(f.get_tensor(k).nbytes for k in f.keys() if k.startswith("model.embed_tokens."))
    assert factor_bytes < 0.06 * 49152 * 576 * 4  # int8 A and B at r=128: ~5.7% of the fp32 embedding
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert reloaded.model.embed_tokens.weight.stride() == (1, 49152)  # the head's column-major layout is back
    with torch.no_grad():
        assert torch.equal(reloaded(smollm2_ids).logits, expected)


def _full_rank(weight: torch.Tensor) -> torch.Tensor:
    """The matrix that rank-d factors stand for: the factorization itself is exact at full rank."""
    from hf_factor_embed.factorize import FactorizationTask, get_method

    task = FactorizationTask(weight.detach(), weight.shape[1], ("input", "output"))
    return get_method("svd").factorize(task).dense(weight.detach())


def test_smollm2_full_rank_factors_reproduce_dense_but_are_not_a_compression(smollm2, smollm2_ids):
    with torch.no_grad():
        dense = smollm2(smollm2_ids).logits
    model = _fresh(smollm2)
    model.model.embed_tokens.weight.data = _full_rank(model.model.embed_tokens.weight)  # tied: the head too
    with torch.no_grad():
        assert torch.allclose(model(smollm2_ids).logits, dense, atol=2e-3, rtol=1e-4)
    with pytest.raises(hfe.FactorEmbedError, match=r"1\.\.569.*101\.2%"):
        hfe.patch_model(_fresh(smollm2), rank=576)  # 576 * (49152 + 576) values: more than the dense matrix


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return AutoModel.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir)


def _sentence_embeddings(model, batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


SENTENCES = [
    "A tuple is an immutable sequence.",
    "The with statement wraps a block.",
    "Integers have unlimited precision.",
]


def test_minilm_round_trip_and_full_rank(minilm, tmp_path):
    dense_model, tok = minilm
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    dense = _sentence_embeddings(dense_model, batch)

    full = _fresh(dense_model)
    full.embeddings.word_embeddings.weight.data = _full_rank(full.embeddings.word_embeddings.weight)
    assert torch.allclose(_sentence_embeddings(full, batch), dense, atol=1e-4)

    model = hfe.patch_model(_fresh(dense_model), rank=128)
    expected = _sentence_embeddings(model, batch)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded.get_input_embeddings(), hfe.FactorizedEmbedding)
    assert torch.equal(_sentence_embeddings(reloaded, batch), expected)
    assert torch.nn.functional.cosine_similarity(expected, dense).min() > 0.5


def test_another_models_tokenizer_is_refused_on_a_real_model(smollm2, minilm):
    """all-MiniLM's 30,522-token vocabulary would pick SmolLM2's band from the wrong ids."""
    _, minilm_tokenizer = minilm
    with pytest.raises(hfe.FactorEmbedError, match="30,522 tokens but the model's embedding 49,152 rows"):
        hfe.patch_model(_fresh(smollm2), rank=64, calibration={"a": "some text " * 50}, tokenizer=minilm_tokenizer)
