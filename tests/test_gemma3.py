"""Gemma-3-270M, the flagship: a 262,144 x 640 tied embedding scaled by sqrt(d) on the way in. Calibrated on
named sources (short texts: Gemma is slow on 2 cores), factorized, saved and reloaded through the Auto class with
identical logits and ties, float and int8, in a smaller file; without the plugin the load fails loudly."""

from __future__ import annotations

import sysconfig

import pytest
import torch
from test_autoload import python
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.folders import folder_bytes

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma3(gemma3_dir):
    return AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def served(gemma3_dir) -> dict[str, torch.Tensor]:
    """256 tokens each of two served sources: Python's reference and the German gettext messages."""
    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    texts = {"pydoc": load_source("pydoc").text[:4000], "de": "\n".join(load_source("lang:de").text.splitlines()[:200])}
    return {name: tokenizer(t, return_tensors="pt").input_ids[0][:256] for name, t in texts.items()}


def fresh(model):
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("bits", [None, 8])
def test_gemma3_round_trip_is_identical_tied_and_smaller(gemma3, gemma3_dir, served, bits, tmp_path):
    model = hfe.patch_model(fresh(gemma3), rank=64, calibration=served, model_tokens=128, bits=bits)
    embedding = model.get_input_embeddings()
    assert model.lm_head.weight is embedding.weight and embedding.embed_scale == pytest.approx(640**0.5, rel=1e-3)
    assert model.factor_embed_report.sources == {"pydoc": 256, "de": 256}
    band = embedding.dense_index
    assert torch.isin(served["de"], band).any() and torch.isin(served["pydoc"], band).any()
    probe = torch.cat([served["pydoc"][:12], served["de"][:12]])[None]
    with torch.no_grad():
        expected = model(probe).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, expected)
    assert reloaded.lm_head.weight is reloaded.get_input_embeddings().weight
    assert folder_bytes(tmp_path) < 0.8 * folder_bytes(gemma3_dir)


def test_gemma3_checkpoint_fails_loudly_without_the_plugin(gemma3, tmp_path):
    hfe.patch_model(fresh(gemma3), rank=8).save_pretrained(tmp_path)
    result = python(
        f"""
        import sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        """,
        "-S",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Unknown quantization type, got hf_factor_embed" in result.stderr


def test_gemma3_writes_its_own_text_for_recovery(gemma3, gemma3_dir):
    from hf_factor_embed.recovery.generate import GenerationConfig, self_generate

    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    config = GenerationConfig(batch_size=3, max_new_tokens=12, seed=1)
    texts = self_generate(gemma3, tokenizer, 30, config=config, progress=False)["text"]
    assert len(texts) >= 3 and len(set(texts)) == len(texts)
    assert self_generate(gemma3, tokenizer, 30, config=config, progress=False)["text"] == texts  # seeded


def test_gemma3_keeps_its_special_tokens_exact_and_continues_like_dense(gemma3, gemma3_dir):
    """Scores alone leave ``<bos>`` (never in the text, never predicted) out of a small band; it is kept anyway, and
    at the main job's point greedy continuations of prompts fed with ``<bos>`` start as dense's do (prompts whose
    words the band serves: a rare word's row is the tail's, issue 21). Before, a
    checkpoint without ``<bos>`` in its band answered "The capital of Australia is" with " is is is ..."."""
    from hf_factor_embed.calibration.model_text import special_token_ids
    from hf_factor_embed.factorize.banded import BandedMethod

    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    calibration = {"pydoc": load_source("pydoc").text[:6000]}
    small = hfe.patch_model(
        fresh(gemma3),
        rank=16,
        method=BandedMethod(band_share=0.5),
        calibration=calibration,
        tokenizer=tokenizer,
        model_tokens=128,
    )
    specials = special_token_ids(gemma3, tokenizer)
    assert {0, 1, 2, 3, 106} <= set(specials.tolist())  # pad, eos, bos, unk, <end_of_turn>
    assert {255999, 256000} <= set(specials.tolist())  # <start_of_image>, <end_of_image>: not flagged special
    assert torch.isin(specials, small.get_input_embeddings().dense_index).all()

    model = hfe.patch_model(
        fresh(gemma3),
        rank=160,
        method=BandedMethod(band_share=0.9),
        calibration=calibration,
        tokenizer=tokenizer,
        model_tokens=256,
        bits=4,
    )
    for prompt in ("The capital of Australia is", "In Python, a list is"):  # words of the served kind
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        assert ids[0, 0] == tokenizer.bos_token_id
        dense, ours = (m.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :] for m in (gemma3, model))
        assert torch.equal(ours[:3], dense[:3]), (prompt, tokenizer.decode(dense), tokenizer.decode(ours))


def test_gemma3_product_tail_round_trip_is_identical_tied_and_smaller(gemma3, gemma3_dir, served, tmp_path):
    """The tail every token keeps a row of (product codes, outlier coordinates exact) on the real 262k vocabulary."""
    from hf_factor_embed.factorize.banded import BandedMethod

    method = BandedMethod(0.9, tail="pq", tail_sub_dim=16)
    model = hfe.patch_model(fresh(gemma3), rank=16, method=method, calibration=served, model_tokens=128, bits=4)
    embedding = model.get_input_embeddings()
    assert embedding.tail_codes.shape == (262144, 40) and embedding.tail_columns.numel() == 16
    probe = torch.cat([served["pydoc"][:12], served["de"][:12]])[None]
    with torch.no_grad():
        expected = model(probe).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.tail_codes is reloaded.get_input_embeddings().tail_codes
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, expected)
    assert folder_bytes(tmp_path) < 0.45 * folder_bytes(gemma3_dir)
