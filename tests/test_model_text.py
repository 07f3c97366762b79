"""Text as the model sees it: ``<bos>`` first in every window where the tokenizer adds it, and the special tokens
kept as exact band rows whatever the calibration says (a ``<bos>`` outside the band broke every continuation)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_tokenizer, tiny_words
from transformers import PreTrainedTokenizerFast

import hf_factor_embed as hfe
from hf_factor_embed.calibration.model_text import bos_prefix, model_windows, special_token_ids
from hf_factor_embed.factorize.banded import BandedMethod
from hf_factor_embed.measure.perplexity import perplexity


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """tiny_tokenizer with a post-processor that puts "<s>" (id 1, renamed from "w1") before every text."""
    from tokenizers import processors

    tok = tiny_tokenizer()
    backend = tok.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="w1 $A", special_tokens=[("w1", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>", bos_token="w1")
    return tok


def test_bos_is_found_only_where_the_tokenizer_adds_it():
    assert bos_prefix(bos_tokenizer()) == 1
    assert bos_prefix(tiny_tokenizer()) is None
    assert bos_prefix(None) is None


def test_every_window_starts_with_bos_and_holds_window_minus_one_tokens_of_text():
    ids = torch.arange(10, 30)
    rows = model_windows(ids, 5, bos_id=1)
    assert rows.shape == (5, 5) and (rows[:, 0] == 1).all()
    assert torch.equal(rows[:, 1:].reshape(-1), ids)
    assert torch.equal(model_windows(ids, 5), ids.view(4, 5))
    assert torch.equal(model_windows(ids[:3], 5, bos_id=1), torch.tensor([[1, 10, 11, 12]]))


def test_perplexity_scores_each_window_after_its_bos():
    model = tiny_llama()
    ids = torch.randint(3, VOCAB, (30,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windows = torch.cat([torch.ones(3, 1, dtype=torch.long), ids.view(3, 10)], dim=1)
        logits = model(windows).logits[:, :-1]
        expected = math.exp(float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids)))
    assert perplexity(model, ids, window=11, bos_id=1) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, ids, window=11, bos_id=1) != pytest.approx(perplexity(model, ids, window=10), rel=1e-3)


def test_special_tokens_are_exact_rows_whatever_the_scores():
    """A calibration text that never holds the special tokens would leave them out of a small band."""
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    specials = special_token_ids(model, tokenizer)
    assert set(specials.tolist()) == {0, 1, 2, VOCAB - 1}  # [UNK]/pad, the config's bos and eos, "</s>"
    text = " ".join(f"w{i}" for i in range(100, 140)) * 20  # never a special token
    dense = model.get_input_embeddings().weight.detach().clone()
    hfe.patch_model(model, rank=8, method=BandedMethod(band_share=0.3), calibration={"t": text}, tokenizer=tokenizer)
    layer = model.get_input_embeddings()
    band = layer.dense_index
    assert torch.isin(specials, band).all()
    assert torch.equal(layer.dense_weight()[specials], dense[specials])
    assert band.numel() >= 14  # the plan's 14 rows, plus the special tokens where the plan had no room


def test_special_tokens_from_the_config_alone_without_a_tokenizer():
    model = tiny_llama()
    hfe.patch_model(model, rank=8, calibration=torch.arange(100, 140).repeat(20))
    assert torch.isin(torch.tensor([0, 1, 2]), model.get_input_embeddings().dense_index).all()


def test_calibration_reads_windows_with_bos_first(monkeypatch):
    from hf_factor_embed.calibration import collect as calibration

    seen = []
    original = calibration.iter_head_inputs

    def recording(model, ids, **kwargs):
        seen.append(kwargs.get("bos_id"))
        yield from original(model, ids, **kwargs)

    monkeypatch.setattr(calibration, "iter_head_inputs", recording)
    hfe.patch_model(tiny_llama(), rank=8, calibration={"t": tiny_words(600)}, tokenizer=bos_tokenizer())
    assert seen == [1]


def test_another_models_tokenizer_is_refused_before_any_work():
    from tokenizers import Tokenizer, models

    small = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, "[UNK]")))
    with pytest.raises(hfe.FactorEmbedError, match="another model's tokenizer"):
        hfe.patch_model(tiny_llama(), rank=8, calibration={"t": "a a a"}, tokenizer=small)
