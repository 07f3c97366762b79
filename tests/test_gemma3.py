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
from hf_factor_embed.folders import folder_bytes
from hf_factor_embed.sources import load_source

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
