"""Text the teacher writes itself: deterministic under a seed, cached as a Dataset, mixed with file text without
touching the held-back blocks, ``recover --self-generate`` end to end, and its bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_words
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed import FactorEmbedError
from hf_factor_embed.cli import main
from hf_factor_embed.recovery.generate import GenerationConfig, self_generate
from hf_factor_embed.recovery.run import _training_blocks

SMALL = GenerationConfig(batch_size=4, max_new_tokens=24, seed=3)


def test_generation_is_deterministic_under_a_seed_and_cached(tmp_path):
    teacher, tokenizer = tiny_llama(), tiny_tokenizer()
    first = self_generate(teacher, tokenizer, 200, config=SMALL, cache_dir=tmp_path, progress=False)
    again = self_generate(teacher, tokenizer, 200, config=SMALL, progress=False)
    assert first["text"] == again["text"] and sum(len(t.split()) for t in first["text"]) >= 150
    assert len(set(first["text"])) == len(first["text"])  # deduplicated
    (cached,) = list(tmp_path.iterdir())
    other = self_generate(teacher, tokenizer, 200, config=GenerationConfig(batch_size=4, max_new_tokens=24, seed=4))
    assert other["text"] != first["text"]

    def refuse(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    teacher.generate = refuse
    assert self_generate(teacher, tokenizer, 200, config=SMALL, cache_dir=tmp_path)["text"] == first["text"]


def test_bad_input_is_refused(tmp_path):
    from transformers import LlamaModel

    with pytest.raises(FactorEmbedError, match="positive number"):
        self_generate(tiny_llama(), tiny_tokenizer(), 0)
    base = LlamaModel(tiny_llama().config)
    with pytest.raises(FactorEmbedError, match="no generation head"):
        self_generate(base, tiny_tokenizer(), 100)


def test_generated_and_file_text_mix_without_touching_the_held_back_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_FACTOR_EMBED_CACHE", str(tmp_path))  # the generated text is cached there
    from datasets import Dataset

    from hf_factor_embed.recovery.data import pack_blocks

    tokenizer = tiny_tokenizer()
    given = pack_blocks(Dataset.from_dict({"text": [tiny_words(2000, seed=5)]}), tokenizer, 32)
    train, held_back, _ = _training_blocks(given, tiny_llama(), tokenizer, 300, 32)
    held = {tuple(b.tolist()) for b in held_back["input_ids"]}
    assert held == {tuple(b.tolist()) for b in given.select(range(len(given) - len(held), len(given)))["input_ids"]}
    assert not held & {tuple(b.tolist()) for b in train["input_ids"]}
    assert len(train) > len(given) - len(held)  # the generated blocks train too


def test_recover_self_generate_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_FACTOR_EMBED_CACHE", str(tmp_path / "cache"))
    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(tmp_path / "student")
    argv = ["recover", tmp_path / "student", "--teacher", tmp_path / "teacher", "--self-generate", "2000"]
    argv += ["--mode", "distill", "--max-steps", "2", "--out", tmp_path / "out"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert summary["self_generated_tokens"] == 2000 and summary["steps"] == 2
    assert list((tmp_path / "cache" / "selfgen").iterdir())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert not torch.equal(model.model.embed_tokens.basis, before.model.embed_tokens.basis)


@pytest.mark.real_model
def test_smollm2_writes_varied_text_quickly(smollm2_dir):
    from transformers import AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = GenerationConfig(batch_size=6, max_new_tokens=16, seed=0)
    texts = self_generate(teacher, tokenizer, 150, config=config, progress=False)["text"]
    assert len(texts) >= 6 and len(set(texts)) == len(texts) and all(len(t) >= 16 for t in texts)


def test_the_sampler_draws_from_the_tempered_top_k_top_p_distribution():
    from hf_factor_embed.recovery.generate import GumbelSampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = 40_000

    def frequencies(**settings):
        sampler = GumbelSampler(GenerationConfig(**settings), torch.Generator().manual_seed(0))
        out = sampler(None, logits.expand(rows, -1).clone())
        assert torch.isfinite(out).sum(-1).eq(1).all()  # one finite score per row: what greedy decoding emits
        return torch.bincount(out.argmax(-1), minlength=logits.numel()) / rows

    tempered = (logits / 0.7).softmax(-1)
    assert torch.allclose(frequencies(temperature=0.7, top_k=0, top_p=1.0), tempered, atol=0.01)
    top3 = torch.zeros_like(logits).index_copy(0, torch.arange(3), logits[:3].softmax(-1))
    assert torch.allclose(frequencies(temperature=1.0, top_k=3, top_p=1.0), top3, atol=0.01)
    # top-p 0.7 keeps the smallest prefix whose mass reaches 0.7: tokens 0 and 1 (0.53 + 0.20)
    top_p = torch.zeros_like(logits).index_copy(0, torch.arange(2), logits[:2].softmax(-1))
    assert torch.allclose(frequencies(temperature=1.0, top_k=0, top_p=0.7), top_p, atol=0.01)
