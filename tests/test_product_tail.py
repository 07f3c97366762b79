"""The product-coded tail: every token outside the band keeps a row of its own (uint8 codes into per-subspace
codebooks, fitted in the head's metric). Round trip identical and tied, smaller than dense, the head's table lookup
equal to the dense product, corrupted codes refused on load, densify and recovery's parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed.errors import CheckpointError, FactorEmbedError
from hf_factor_embed.factorize.banded import BandedMethod
from hf_factor_embed.factorize.product import fit_product_codes
from hf_factor_embed.quantizer.sizes import embedding_bytes
from hf_factor_embed.recovery.trainable import factor_parameters

VOCAB, WIDTH = 2048, 64


def wide_vocab_llama() -> LlamaForCausalLM:
    """A tiny LLaMA whose embedding is most of it, as in the models the tail is for."""
    return tiny_llama(vocab=VOCAB)


def pq_model(centroids: int = 256) -> LlamaForCausalLM:
    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_centroids=centroids, tail_exact_columns=4)
    return hfe.patch_model(wide_vocab_llama(), rank=16, method=method, calibration=calibration)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    out = tmp_path_factory.mktemp("pq")
    model = pq_model()
    model.save_pretrained(out)
    return out, model


def test_codes_recover_rows_better_than_their_mean():
    torch.manual_seed(0)
    rows = torch.randn(4096, 16) @ torch.randn(16, 16)
    codes = fit_product_codes(rows, sub_dim=4, centroids=64)
    assert codes.codes.dtype == torch.uint8 and codes.codes.shape == (4096, 4)
    error = (codes.rows() - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum()
    assert error < 0.35


def test_head_by_table_lookup_equals_the_dense_product():
    head = pq_model().lm_head
    for shape in ((3, 5, WIDTH), (2, 1, WIDTH)):  # positions past the lookup's (rows rebuilt), and a decode step
        h = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(head(h), h @ head.dense_weight().T, rtol=1e-4, atol=1e-4)


def test_round_trip_is_identical_tied_and_smaller(saved, ids):
    out, model = saved
    with torch.no_grad():
        expected = model(ids).logits
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    embedding, head = reloaded.get_input_embeddings(), reloaded.lm_head
    assert head.tail_codes is embedding.tail_codes and head.codebooks is embedding.codebooks
    assert embedding.tail_codes.dtype == torch.uint8 and embedding.tail_codes.shape == (VOCAB, WIDTH // 8)
    spec = json.loads((out / "config.json").read_text())["quantization_config"]["modules"]["input"]
    assert (spec["tail_subvectors"], spec["tail_centroids"]) == (8, 256)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    stored = embedding_bytes(model)
    assert stored["stored"] < 0.5 * stored["dense_fp32"]


def test_every_token_keeps_a_row_of_its_own():
    """The low-rank tail alone maps the rows outside the band into a rank-4 subspace; the codes tell them apart."""
    layer = pq_model().get_input_embeddings()
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[layer.dense_index] = False
    rows = layer.dense_weight()[outside]
    assert torch.linalg.matrix_rank(rows.double()) > 16
    assert torch.unique(layer.tail_codes[outside], dim=0).shape[0] > 0.9 * int(outside.sum())


def test_outlier_columns_are_exact_in_every_row():
    """A few coordinates of the hidden state carry massive activations; the tail keeps them exact (fp16)."""
    dense = wide_vocab_llama().get_input_embeddings().weight.detach().clone()
    layer = pq_model().get_input_embeddings()
    columns, outside = layer.tail_columns, torch.ones(VOCAB, dtype=torch.bool)
    outside[layer.dense_index] = False  # the band's rows are exact in every coordinate
    assert columns.numel() == 4
    tail = layer.dense_weight()[outside][:, columns]
    torch.testing.assert_close(tail, dense[outside][:, columns].half().float(), rtol=0, atol=0)


def test_integer_factors_store_the_outlier_columns_as_int8(tmp_path, ids):
    """With ``bits``, the exact columns are int8 with one scale a row and the file holds the tail's rows outside the
    band only: the bytes shrink, and the reloaded model is the model in memory, tied."""
    from safetensors import safe_open

    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_exact_columns=4)
    model = hfe.patch_model(wide_vocab_llama(), rank=16, method=method, calibration=calibration, bits=4)
    dense = wide_vocab_llama().get_input_embeddings().weight.detach()
    layer = model.get_input_embeddings()
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[layer.dense_index] = False
    exact = dense[outside][:, layer.tail_columns]
    kept = layer.dense_weight()[outside][:, layer.tail_columns]
    assert 0 < (kept - exact).abs().max() <= exact.abs().amax(1).max() / 127  # int8 of a row's largest value
    model.save_pretrained(tmp_path)
    outside_rows = VOCAB - layer.num_dense_rows  # the band's rows never read the codes: not stored
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as file:
        columns = file.get_tensor("model.embed_tokens.tail_column_values_q")
        assert columns.dtype == torch.int8 and columns.shape == (outside_rows, 4)
        assert file.get_tensor("model.embed_tokens.tail_codes").shape == (outside_rows, WIDTH // 8)
        assert "model.embed_tokens.tail_column_values" not in file.keys()
        assert not any(key.startswith("lm_head.") for key in file.keys())  # tied: written once
    with torch.no_grad():
        expected = model(ids).logits
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.tail_column_values is reloaded.get_input_embeddings().tail_column_values
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    assert embedding_bytes(model)["stored"] == embedding_bytes(reloaded)["stored"]
    assert reloaded.config.quantization_config.tail_column_bits == 8
    stored = embedding_bytes(reloaded)["stored"]
    assert stored == sum(t.numel() * t.element_size() for t in _embedding_tensors(tmp_path / "model.safetensors"))


def _embedding_tensors(path) -> list[torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        return [file.get_tensor(k) for k in file.keys() if k.startswith("model.embed_tokens.")]


def test_densify_keeps_the_outputs(ids):
    model = pq_model()
    with torch.no_grad():
        expected = model(ids).logits
        hfe.densify(model)
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_codebooks_train_and_codes_do_not(ids):
    model = pq_model()
    params = factor_parameters(model)
    layer = model.get_input_embeddings()
    assert any(p is layer.codebooks for p in params) and not any(p is layer.tail_codes for p in params)
    for p in params:
        p.requires_grad_(True)
    model(ids, labels=ids).loss.backward()
    assert layer.codebooks.grad is not None and layer.codebooks.grad.abs().sum() > 0


def test_a_code_past_its_codebook_is_refused_on_load(tmp_path):
    from safetensors.torch import load_file, save_file

    pq_model(centroids=16).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    (key,) = [k for k in tensors if k.endswith("tail_codes")]
    tensors[key][5, 0] = 200
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="code 200 but its codebooks have 16 centroids"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tail": "vq"}, "tail='vq'"),
        ({"tail": "pq", "tail_sub_dim": 0}, "tail_sub_dim=0"),
        ({"tail": "pq", "tail_rank": 0}, "tail_rank=0"),
        ({"tail": "pq", "tail_centroids": 300}, "tail_centroids=300"),
    ],
)
def test_bad_tail_settings_are_refused(kwargs, message):
    with pytest.raises(FactorEmbedError, match=message):
        BandedMethod(0.5, **kwargs)


def test_a_sub_dimension_that_does_not_divide_the_width_is_refused():
    with pytest.raises(FactorEmbedError, match="must divide the embedding width 64"):
        hfe.patch_model(
            wide_vocab_llama(),
            rank=8,
            method=BandedMethod(0.5, tail="pq", tail_sub_dim=7),
            calibration=torch.arange(1, 300),
        )


def test_the_torch_k_means_matches_faiss_where_both_run(monkeypatch):
    """faiss-cpu (the ``pq`` extra) is the fast path; without it the same weighted k-means runs in torch."""
    from hf_factor_embed.factorize import product

    if not product._has_faiss():
        pytest.skip("faiss-cpu is not installed")
    torch.manual_seed(0)
    rows = torch.randn(3000, 16) @ torch.randn(16, 16)
    errors = {}
    for path in ("torch", "faiss"):
        monkeypatch.setattr(product, "_has_faiss", lambda path=path: path == "faiss")
        codes = product.fit_product_codes(rows, sub_dim=4, centroids=32)
        errors[path] = float((codes.rows() - rows).pow(2).sum() / rows.pow(2).sum())
    assert abs(errors["torch"] - errors["faiss"]) < 0.1 * errors["faiss"], errors


def _assert_codes_kept_and_tied(model, codes: torch.Tensor) -> None:
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight and head.codebooks is embedding.codebooks
    assert torch.equal(embedding.tail_codes, codes)  # integers never train


def test_cheap_refit_lowers_its_objective_and_keeps_the_codes():
    from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals

    teacher, student = wide_vocab_llama(), pq_model()
    codes = student.get_input_embeddings().tail_codes.clone()
    books = student.get_input_embeddings().codebooks.detach().clone()
    ids = torch.randint(1, VOCAB, (256,), generator=torch.Generator().manual_seed(3))
    signals = collect_teacher_signals(teacher, ids, window=32, progress=False)
    config = CheapRefitConfig(steps=40, batch_positions=64, lr=1e-3)
    result = cheap_refit(student, signals, config)
    before, after = result["before"], result["after"]
    objective = {
        k: r["head_kl"] + config.input_weight * r["input_rel_err"]
        for k, r in result.items()
        if k in ("before", "after")
    }
    assert objective["after"] < objective["before"] and after["input_rel_err"] < before["input_rel_err"]
    assert not torch.equal(student.get_input_embeddings().codebooks, books)  # the codebooks are refit
    _assert_codes_kept_and_tied(student, codes)


def test_cheap_refit_of_the_codebooks_alone_moves_nothing_else_and_survives_a_save(tmp_path, ids):
    from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals

    teacher, student = wide_vocab_llama(), pq_model()
    layer = student.get_input_embeddings()
    kept = {n: getattr(layer, n).detach().clone() for n in ("weight", "basis", "tail_rotation", "dense_rows")}
    books = layer.codebooks.detach().clone()
    signals = collect_teacher_signals(teacher, torch.randint(1, VOCAB, (256,)), window=32, progress=False)
    result = cheap_refit(
        student, signals, CheapRefitConfig(steps=30, batch_positions=64, lr=1e-3, tensors=("codebooks",))
    )
    objective = {k: sum(result[k].values()) for k in ("before", "after")}  # input_weight 1: the two losses' sum
    assert objective["after"] < objective["before"]
    assert not torch.equal(layer.codebooks, books)
    for name, value in kept.items():
        assert torch.equal(getattr(layer, name), value), name
    student.save_pretrained(tmp_path)  # the codebooks are stored in float: the refit is the checkpoint's
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.get_input_embeddings().codebooks, layer.codebooks, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student.eval()(ids).logits)


def test_cheap_refit_refuses_tensors_it_does_not_know():
    from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals

    teacher, student = wide_vocab_llama(), pq_model()
    signals = collect_teacher_signals(teacher, torch.randint(1, VOCAB, (64,)), window=32, progress=False)
    with pytest.raises(FactorEmbedError, match="centroids.*name one or more"):
        cheap_refit(student, signals, CheapRefitConfig(steps=1, tensors=("centroids",)))


def test_distill_saves_and_reloads_a_product_coded_student(tmp_path, ids):
    from datasets import Dataset

    from hf_factor_embed.recovery import DistillConfig, distill, split_blocks

    teacher, student = wide_vocab_llama(), pq_model()
    codes = student.get_input_embeddings().tail_codes.clone()
    blocks = torch.randint(1, VOCAB, (8, 16), generator=torch.Generator().manual_seed(4))
    train, held_back = split_blocks(Dataset.from_dict({"input_ids": blocks.tolist()}).with_format("torch"), 2)
    config = DistillConfig(output_dir=str(tmp_path), max_steps=2, batch_size=2, lr=1e-2, eval_every=2)
    assert distill(student, train, held_back, config, teacher=teacher)["steps"] == 2
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    _assert_codes_kept_and_tied(reloaded, codes)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student.eval()(ids).logits)


def test_lora_merge_keeps_a_product_coded_model_factorized_and_tied(tmp_path, ids):
    from peft import LoraConfig, get_peft_model

    student = pq_model()
    codes = student.get_input_embeddings().tail_codes.clone()
    peft_model = get_peft_model(student, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        expected = merged(ids).logits
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    _assert_codes_kept_and_tied(reloaded, codes)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected)
