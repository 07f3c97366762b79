"""patch -> save -> reload through the Auto classes, on tiny random models of every supported family."""

from pathlib import Path

import torch
from conftest import TINY_MODELS, VOCAB
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

import hf_factor_embed as hfe
from hf_factor_embed import FactorizedEmbedding, FactorizedLMHead

RANK = 8
AUTO = {
    "llama_tied": AutoModelForCausalLM,
    "llama_untied": AutoModelForCausalLM,
    "gpt2": AutoModelForCausalLM,
    "bert_mlm": AutoModelForMaskedLM,
}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _keys(path: Path) -> dict[str, tuple]:
    with safe_open(path / "model.safetensors", "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _is_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_patch_save_reload_is_bit_identical(tiny_name, input_ids, tmp_path):
    dense = TINY_MODELS[tiny_name]()
    was_tied = _is_tied(dense)
    dense_bytes_dir = tmp_path / "dense"
    dense.save_pretrained(dense_bytes_dir)

    model = hfe.patch_model(dense, rank=RANK)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, FactorizedEmbedding) and isinstance(head, FactorizedLMHead)
    assert _is_tied(model) == was_tied
    if was_tied:
        assert head.basis is emb.basis
    expected = _logits(model, input_ids)

    model.save_pretrained(tmp_path / "f1")
    reloaded = AUTO[tiny_name].from_pretrained(tmp_path / "f1")
    assert torch.equal(_logits(reloaded, input_ids), expected)
    assert _is_tied(reloaded) == was_tied
    if was_tied:
        assert reloaded.get_output_embeddings().basis is reloaded.get_input_embeddings().basis

    # Only the factors are stored: each factorized matrix V x d became V x r + r x d.
    keys = _keys(tmp_path / "f1")
    d = emb.embedding_dim
    n_matrices = 1 if was_tied else 2
    assert sum(shape == (VOCAB, d) for shape in keys.values()) == 0
    assert sum(shape == (VOCAB, RANK) for shape in keys.values()) == n_matrices
    saved_bytes = (tmp_path / "f1" / "model.safetensors").stat().st_size
    dense_size = (dense_bytes_dir / "model.safetensors").stat().st_size
    expected_saving = 4 * n_matrices * (VOCAB * d - RANK * (VOCAB + d))
    assert abs((dense_size - saved_bytes) - expected_saving) < 4096  # headers differ by a few hundred bytes

    # A second save/load round trip changes nothing.
    reloaded.save_pretrained(tmp_path / "f2")
    again = AUTO[tiny_name].from_pretrained(tmp_path / "f2")
    assert torch.equal(_logits(again, input_ids), expected)
    assert _keys(tmp_path / "f2") == keys


def test_base_model_loads_from_a_head_checkpoint(tiny_name, input_ids, tmp_path):
    model = hfe.patch_model(TINY_MODELS[tiny_name](), rank=RANK)
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base.get_input_embeddings(), FactorizedEmbedding)
    with torch.no_grad():
        assert torch.equal(
            base(input_ids=input_ids).last_hidden_state, model.base_model(input_ids=input_ids).last_hidden_state
        )


def test_densify_gives_plain_model_with_equal_outputs(tiny_name, input_ids, tmp_path):
    model = hfe.patch_model(TINY_MODELS[tiny_name](), rank=RANK)
    expected = _logits(model, input_ids)
    emb_class = type(TINY_MODELS[tiny_name]().get_input_embeddings())
    was_tied = _is_tied(model)
    hfe.densify(model)
    assert type(model.get_input_embeddings()) is emb_class
    assert not any(isinstance(m, hfe.FactorizedLayer) for m in model.modules())
    assert _is_tied(model) == was_tied
    assert torch.allclose(_logits(model, input_ids), expected, atol=1e-4)
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path)  # a plain dense checkpoint: loads without the plugin's help
    assert torch.allclose(_logits(AUTO[tiny_name].from_pretrained(tmp_path), input_ids), expected, atol=1e-4)
    hfe.patch_model(model, rank=4)  # and can be factorized again


def test_extra_embeddings_on_request(tmp_path, input_ids):
    from conftest import tiny_bert

    model = hfe.patch_model(
        tiny_bert(), rank={"input": RANK, "output": RANK, "position": 4}, roles=("input", "output", "position")
    )
    assert isinstance(model.bert.embeddings.position_embeddings, FactorizedEmbedding)
    expected = _logits(model, input_ids)
    model.save_pretrained(tmp_path)
    assert torch.equal(_logits(AutoModelForMaskedLM.from_pretrained(tmp_path), input_ids), expected)


def test_budget_picks_the_rank():
    from conftest import tiny_llama

    model = hfe.patch_model(tiny_llama(), budget=0.25)
    r = model.get_input_embeddings().rank
    assert r == int(0.25 * VOCAB * 64 / (VOCAB + 64))
    assert model.factor_embed_report.modules[0].kept <= 0.25


def test_report_counts_parameters():
    from conftest import tiny_llama

    dense = tiny_llama(tied=False)
    before = dense.num_parameters()
    model = hfe.patch_model(dense, rank=RANK)
    report = model.factor_embed_report
    assert report.model_params_before == before
    assert report.model_params_after == model.num_parameters() == before - 2 * (VOCAB * 64 - RANK * (VOCAB + 64))
    assert [m.role for m in report.modules] == ["input", "output"]
    assert "model parameters" in str(report)


def test_generic_fallback_keeps_embed_scale_and_shared_embeddings(tmp_path):
    """BART has no adapter of its own: the fallback finds its scaled, encoder/decoder-shared embedding."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

    from hf_factor_embed.adapters import GenericAdapter, get_adapter

    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=200, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        scale_embedding=True,
    )  # fmt: skip
    model = BartForConditionalGeneration(cfg).eval()
    assert isinstance(get_adapter(model), GenericAdapter)
    dense_class = type(model.get_input_embeddings())
    ids = torch.randint(3, 200, (1, 9))
    hfe.patch_model(model, rank=8)
    emb = model.get_input_embeddings()
    assert abs(emb.embed_scale - 32**0.5) < 1e-9
    assert model.model.encoder.embed_tokens is emb and model.lm_head.basis is emb.basis
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert reloaded.model.decoder.embed_tokens is reloaded.get_input_embeddings()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, decoder_input_ids=ids).logits, expected)
    hfe.densify(reloaded)
    assert type(reloaded.get_input_embeddings()) is dense_class
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids, decoder_input_ids=ids).logits, expected, atol=1e-4)


def test_save_pretrained_writes_the_state_dict_it_is_given(tmp_path, input_ids):
    # transformers replaces save_pretrained(state_dict=...) by the quantizer's own for quantized models; Accelerate's
    # FSDP save passes the gathered weights that way, so ignoring them saved the untrained (or sharded) model.
    from conftest import tiny_llama

    for bits in (None, 8):
        model = hfe.patch_model(tiny_llama(), rank=8, bits=bits)
        given = {k: v.detach().clone() for k, v in model.state_dict().items()}
        doubled = given["model.embed_tokens.basis"] * 2
        given["model.embed_tokens.basis"] = given["lm_head.basis"] = doubled  # tied: one tensor under both names
        given["model.layers.0.mlp.up_proj.weight"] = given["model.layers.0.mlp.up_proj.weight"] + 1
        model.save_pretrained(tmp_path / str(bits), state_dict=given)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / str(bits))
        rounding = {} if bits is None else {"rtol": 0.02, "atol": 1e-3}  # the given floats are rounded to 8 bits
        torch.testing.assert_close(reloaded.model.embed_tokens.basis, 2 * model.model.embed_tokens.basis, **rounding)
        up = model.model.layers[0].mlp.up_proj.weight
        torch.testing.assert_close(reloaded.model.layers[0].mlp.up_proj.weight, up + 1)
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
        assert not hasattr(model, "_hf_factor_embed_state_dict")
