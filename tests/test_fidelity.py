"""KL divergence and same-top share against a reference (issue 32's statistics), teacher-forced on perplexity's
windows: equal to a direct computation, zero against itself, and printed by ``eval --compare``."""

from __future__ import annotations

import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_words

import hf_factor_embed as hfe
from hf_factor_embed.calibration.model_text import model_windows
from hf_factor_embed.cli import main
from hf_factor_embed.measure.fidelity import FidelityMeter, fidelity
from hf_factor_embed.measure.perplexity import perplexity


def test_the_statistics_equal_a_direct_computation():
    dense, ours = tiny_llama(), hfe.patch_model(tiny_llama(), rank=4)
    ids = torch.randint(1, 300, (200,), generator=torch.Generator().manual_seed(0))
    got = fidelity(dense, ours, ids, window=64, bos_id=1)
    windows = model_windows(ids, 64, 1)
    with torch.no_grad():
        p = torch.softmax(dense(input_ids=windows).logits[:, :-1].double(), -1)
        q = torch.softmax(ours(input_ids=windows).logits[:, :-1].double(), -1)
    kld = (p * (p.log() - q.log())).sum(-1).reshape(-1)
    assert got.positions == kld.numel() == windows.shape[0] * 63
    assert abs(got.mean_kld - float(kld.mean())) < 1e-5 * max(1.0, float(kld.mean()))
    assert abs(got.p99_kld - float(torch.quantile(kld, 0.99))) < 1e-4 * max(1.0, float(kld.max()))
    assert got.same_top == float((p.argmax(-1) == q.argmax(-1)).double().mean())
    same = fidelity(dense, dense, ids, window=64, bos_id=1)
    assert same.mean_kld < 1e-6 and same.same_top == 1.0


def test_the_meter_keeps_dense_exact_in_hidden_states_and_falls_back_to_its_top_tokens():
    """compress keeps dense's final hidden states and a copy of its head, not V-wide logits: its KL divergence is
    the full one. Where the logits are not the head's plain output it keeps dense's most likely tokens instead
    (the rest as one outcome): a lower bound; same-top is exact either way."""
    from hf_factor_embed.measure.fidelity import DenseHead, ReferenceTop

    dense, ours = tiny_llama(), hfe.patch_model(tiny_llama(), rank=4)
    ids = torch.randint(1, 300, (200,), generator=torch.Generator().manual_seed(0))
    full = fidelity(dense, ours, ids, window=64, bos_id=1)
    for record, kind in ((FidelityMeter.recording(dense), DenseHead), (FidelityMeter(k=64), ReferenceTop)):
        dense_ppl = perplexity(dense, ids, window=64, bos_id=1, observe=record)
        reference = record.recorded()
        meter = FidelityMeter(reference)
        perplexity(ours, ids, window=64, bos_id=1, observe=meter)
        kept = meter.fidelity()
        assert isinstance(reference, kind) and dense_ppl == perplexity(dense, ids, window=64, bos_id=1)
        assert kept.positions == full.positions and kept.same_top == full.same_top
        if kind is DenseHead:
            assert abs(kept.mean_kld - full.mean_kld) < 1e-5 * max(1.0, full.mean_kld)
        else:  # 64 of the tiny model's near-uniform 320 tokens: a loose bound
            assert 0 < kept.mean_kld <= full.mean_kld + 1e-6
    # logits changed after the head (a scale, as Cohere's logit_scale): the meter notices and keeps the top tokens
    scaled = FidelityMeter.recording(dense)
    perplexity(dense, ids, window=64, bos_id=1, observe=lambda logits: scaled(logits * 2))
    assert isinstance(scaled.recorded(), ReferenceTop)


def test_eval_compare_prints_kl_divergence_and_same_top(tmp_path, capsys):
    tiny_llama().save_pretrained(tmp_path / "dense")
    tiny_tokenizer().save_pretrained(tmp_path / "dense")
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "text.txt").write_text(tiny_words(600))
    code = main(
        ["eval", str(tmp_path / "ckpt"), "--text", str(tmp_path / "text.txt"), "--compare", str(tmp_path / "dense")]
    )
    out = capsys.readouterr().out
    assert code == 0 and "mean KL divergence" in out and "same top token at" in out
