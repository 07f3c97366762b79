"""Integer factors (``bits``): what is measured is what is saved, the checkpoint holds integers and scales only,
and ``from_pretrained`` restores identical logits, tying and the float factors; ``densify`` still works."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODELS, VOCAB, tiny_llama
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed import CheckpointError, FactorEmbedError
from hf_factor_embed.quantizer.rounding import dequantize, dequantize_column_major, quantize, stored_shapes
from hf_factor_embed.quantizer.structure import factorized_layers


def calibration() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2000,), generator=torch.Generator().manual_seed(0))


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("tied", [True, False])
def test_integer_factors_round_trip_identical_and_tied(bits, tied, tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(tied), rank=16, calibration=calibration(), bits=bits)
    with torch.no_grad():
        before = model(input_ids).logits
    model.save_pretrained(tmp_path)
    stored = tensors(tmp_path)
    for name in factorized_layers(model):
        assert f"{name}.weight" not in stored and f"{name}.basis" not in stored  # no float factor on disk
    assert stored["model.embed_tokens.weight_q"].dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert stored["model.embed_tokens.weight_scale"].dtype == torch.float16
    assert ("lm_head.weight_q" in stored) == (not tied)  # a tied head's factors are written once

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, before)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tied
    assert not [n for n, _ in reloaded.named_parameters() if n.endswith(("_q", "_scale"))]
    assert reloaded.config.quantization_config.bits == bits

    reloaded.save_pretrained(tmp_path / "again")  # a second round trip stores the same integers
    assert all(torch.equal(v, tensors(tmp_path / "again")[k]) for k, v in stored.items())


def test_integer_factors_shrink_the_embedding_bytes(tmp_path):
    sizes = {}
    for bits, band_bits in ((None, None), (8, None), (4, None), (4, 4)):
        model = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=bits, band_bits=band_bits)
        model.save_pretrained(tmp_path / f"{bits}-{band_bits}")
        sizes[bits, band_bits] = sum(
            v.numel() * v.element_size()
            for k, v in tensors(tmp_path / f"{bits}-{band_bits}").items()
            if k.startswith("model.embed_tokens.")
        )
    assert sizes[8, None] < 0.4 * sizes[None, None]
    assert sizes[4, 4] < sizes[4, None] < sizes[8, None]
    assert sizes[4, 4] < 0.7 * sizes[8, None]


def test_densify_of_an_integer_factor_model_keeps_its_outputs(input_ids):
    model = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=4)
    with torch.no_grad():
        before = model(input_ids).logits
        dense = hfe.densify(model)
        torch.testing.assert_close(dense(input_ids).logits, before, rtol=1e-5, atol=1e-5)


def test_training_moves_the_floats_and_saving_rounds_them_again(tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=8)
    with torch.no_grad():
        model.model.embed_tokens.basis.add_(0.01)  # what an optimizer step does to the float factor
        q, scale = quantize(model.model.embed_tokens.basis, 8, None)
        expected = dequantize(q, scale, 8, model.model.embed_tokens.basis.shape[1], None)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.embed_tokens.basis, expected)


@pytest.mark.parametrize(("bits", "group_size"), [(3, None), (16, None), (8, 3), (None, 32)])
def test_unsupported_bits_are_refused_before_anything_changes(bits, group_size):
    model = tiny_llama()
    with pytest.raises(FactorEmbedError, match="bits|group_size"):
        hfe.patch_model(model, rank=8, bits=bits, group_size=group_size)
    assert not factorized_layers(model)


@pytest.mark.parametrize("shape", [(7, 64), (5, 179), (3, 11)])
@pytest.mark.parametrize(("bits", "group"), [(8, None), (8, 16), (4, 32), (4, None)])
def test_quantize_is_idempotent_and_within_half_a_step(shape, bits, group):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    q, scale = quantize(w, bits, group)
    back = dequantize(q, scale, bits, shape[1], group)
    assert back.shape == w.shape
    step = scale.float().max()
    assert (back - w).abs().max() <= 0.5 * step * 1.01
    assert torch.equal(quantize(back, bits, group)[0], q)


@pytest.mark.parametrize("shape", [(4099, 16), (300, 640), (5, 179), (2050, 11)])
@pytest.mark.parametrize(("bits", "group"), [(8, 64), (8, None), (4, 32), (4, 16)])
def test_column_major_reading_holds_the_row_major_values_bit_for_bit(shape, bits, group):
    # what loading writes A and the band with; its blocks and the partial last group must not change a value
    q, scale = quantize(torch.randn(shape, generator=torch.Generator().manual_seed(1)), bits, group)
    rows = dequantize(q, scale, bits, shape[1], group)
    columns = dequantize_column_major(q, scale, bits, shape[1], group)
    assert columns.stride() == (1, shape[0]) and torch.equal(columns, rows)


def rewrite(path, **changes) -> None:
    """Overwrite some tensors of a saved checkpoint (what a damaged or hand-edited file looks like)."""
    stored = tensors(path)
    stored.update(changes)
    save_file(stored, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("bits", [8, 4])
def test_every_family_round_trips_with_the_expected_bytes(tiny_name, bits, tmp_path, input_ids):
    model = hfe.patch_model(TINY_MODELS[tiny_name](), rank=16, calibration=calibration(), bits=bits)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        before = model(input_ids).logits
    model.save_pretrained(tmp_path)
    stored = tensors(tmp_path)
    expected, seen = 0, set()  # what stored_shapes promises for every factor, a tied one counted once
    for layer in factorized_layers(model).values():
        for name in ("weight", "basis", "dense_rows"):
            tensor = getattr(layer, name)
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            q_shape, scale_shape = stored_shapes(*tensor.shape, *model.config.quantization_config.precision(name))
            expected += q_shape[0] * q_shape[1] + 2 * scale_shape[0] * scale_shape[1]
    found = sum(v.numel() * v.element_size() for k, v in stored.items() if k.endswith(("_q", "_scale")))
    assert found == expected

    reloaded = type(model).from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, before)
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) == tied


@pytest.mark.parametrize("calibrated", [False, True])
def test_loading_integer_factors_logs_no_false_corruption_warning(calibrated, tmp_path):
    import logging

    kwargs = {"calibration": calibration()} if calibrated else {"method": "svd"}
    hfe.patch_model(tiny_llama(), rank=16, bits=8, **kwargs).save_pretrained(tmp_path)
    from transformers.utils import logging as hf_logging

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger, verbosity = logging.getLogger("transformers.modeling_utils"), hf_logging.get_verbosity()
    logger.addHandler(handler)
    hf_logging.set_verbosity_warning()  # the suite runs at "error"
    try:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    # transformers warns "This checkpoint seem corrupted" when both sides of a tie are absent: here the float
    # factors are absent by design (rebuilt from the integers, then tied)
    assert not [w for w in warnings if "seem corrupted" in w]


DAMAGED_SCALES = {"zero": 0.0, "negative zero": -0.0, "negative": -0.5, "nan": float("nan"), "inf": float("inf")}


@pytest.mark.parametrize("damage", [*DAMAGED_SCALES, "shape"])
def test_a_damaged_scale_tensor_is_refused(damage, tmp_path):
    hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=8).save_pretrained(tmp_path)
    scale = tensors(tmp_path)["model.embed_tokens.weight_scale"].clone()
    if damage == "shape":
        scale = scale[:-1]
    else:
        scale[3] = DAMAGED_SCALES[damage]
    rewrite(tmp_path, **{"model.embed_tokens.weight_scale": scale})
    with pytest.raises(CheckpointError, match="weight_scale") as error:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ("save the model again" in str(error.value)) or ("disagree" in str(error.value))


@pytest.mark.parametrize("bits", [4, 5])
def test_a_wrong_bits_in_config_json_is_refused(bits, tmp_path):
    import json

    hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["bits"] = bits
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="disagree" if bits == 4 else "bits=5"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_4_bit_codes_keep_the_basis_and_band_in_8_bits_unless_told(tmp_path):
    for band_bits, expected in ((None, torch.int8), (4, torch.uint8)):
        model = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=4, band_bits=band_bits)
        folder = tmp_path / str(band_bits)
        model.save_pretrained(folder)
        stored = tensors(folder)
        assert stored["model.embed_tokens.weight_q"].dtype == torch.uint8
        assert stored["model.embed_tokens.basis_q"].dtype == expected
        assert stored["model.embed_tokens.dense_rows_q"].dtype == expected
    with pytest.raises(FactorEmbedError, match=r"band_bits \(--band-bits\) needs bits"):
        hfe.patch_model(tiny_llama(), rank=16, band_bits=8)


def test_a_checkpoint_written_before_band_bits_reads_every_factor_at_bits(tmp_path, input_ids):
    import json

    model = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration(), bits=4, band_bits=4)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]["band_bits"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids).logits, model(input_ids).logits)


def test_balancing_keeps_the_product_and_evens_the_columns_of_a():
    from hf_factor_embed.quantizer.storage import balance_factors

    layer = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration()).model.embed_tokens
    with torch.no_grad():
        # columns as unequal as a factorization leaves them
        layer.weight.mul_(torch.logspace(0, -2, layer.weight.shape[1]))
        before = layer.dense_weight()
        balance_factors(layer)
        torch.testing.assert_close(layer.dense_weight(), before, rtol=1e-5, atol=1e-6)
    rms = layer.weight.pow(2).mean(0).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))


def test_a_body_quantized_by_torchao_after_loading_composes_and_is_refused_at_save(tmp_path, input_ids):
    """The order that works: factorize, save, load, quantize the body with torchao (which leaves the factorized
    layers alone); saving that model is refused in one line, naming the order and the export, and writes nothing."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = tiny_llama()
    hfe.patch_model(model, rank=16, calibration=calibration(), bits=8)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        before = loaded(input_ids=input_ids).logits

    quantize_(loaded, Int8WeightOnlyConfig())

    layers = dict(factorized_layers(loaded))
    assert layers and all(type(p) is torch.nn.Parameter for m in layers.values() for p in m.parameters())
    assert type(loaded.model.layers[0].mlp.up_proj.weight) is not torch.nn.Parameter  # the body: torchao's
    with torch.no_grad():
        after = loaded(input_ids=input_ids).logits
    assert torch.allclose(after, before, atol=0.1) and not torch.equal(after, before)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with pytest.raises(FactorEmbedError, match="save the factorized model before quantizing its body"):
        loaded.save_pretrained(tmp_path / "quantized")
    assert not (tmp_path / "quantized").exists()
