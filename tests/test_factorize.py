"""The math of each factorization method on small matrices with known optima, and calibration."""

import pytest
import torch
from conftest import VOCAB, tiny_llama

import hf_factor_embed as hfe
from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.stats import CalibrationStats
from hf_factor_embed.factorize import FactorizationTask, available_methods, get_method
from hf_factor_embed.factorize.lowrank import weighted_lowrank


def _problem(v=200, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(v, d, generator=g) @ torch.diag(torch.linspace(3, 0.1, d))
    counts = torch.randint(0, 50, (v,), generator=g).double() ** 2
    x = torch.randn(500, d, generator=g) @ torch.randn(d, d, generator=g)
    return w, CalibrationStats(token_counts=counts, hidden_cov=(x.T @ x / 500).double(), num_tokens=500)


def test_unweighted_matches_truncated_svd():
    w, _ = _problem()
    a, b = weighted_lowrank(w, 5)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    best = (u[:, :5] * s[:5]) @ vh[:5]
    assert torch.allclose((a @ b).double(), best, atol=1e-4)


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_full_rank_is_exact(method):
    w, stats = _problem()
    f = get_method(method).factorize(FactorizationTask(w, w.shape[1], ("input", "output"), stats))
    assert torch.allclose(f.dense(w), w, atol=1e-3)


def _row_weighted_error(w, ab, counts):
    return float((((w - ab) ** 2).sum(1).double() * (counts + 1)).sum())


def _logit_error(w, ab, cov):
    e = (w - ab).double()
    return float(torch.trace(e @ cov @ e.T))


def test_frequency_beats_svd_on_its_own_objective():
    w, stats = _problem()
    task = FactorizationTask(w, 6, ("input",), stats)
    plain, weighted = (get_method(m).factorize(task).dense(w) for m in ("svd", "frequency"))
    assert _row_weighted_error(w, weighted, stats.token_counts) < _row_weighted_error(w, plain, stats.token_counts)


def test_activation_head_beats_svd_on_logit_error():
    w, stats = _problem()
    stats = CalibrationStats(token_counts=torch.zeros(w.shape[0]).double(), hidden_cov=stats.hidden_cov)
    task = FactorizationTask(w, 6, ("output",), stats)
    plain, aware = (get_method(m).factorize(task).dense(w) for m in ("svd", "activation"))
    assert _logit_error(w, aware, stats.hidden_cov) < _logit_error(w, plain, stats.hidden_cov)


def test_weighted_solution_is_optimal_against_perturbations():
    w, stats = _problem()
    f = get_method("activation").factorize(FactorizationTask(w, 6, ("output",), stats))
    a, b = f.a, f.b

    def objective(ab):
        e = (w - ab).double() * (stats.token_counts + 1).sqrt()[:, None]
        return float(torch.trace(e @ (stats.hidden_cov / (torch.trace(stats.hidden_cov) / w.shape[1])) @ e.T))

    best = objective(a @ b)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        da, db = torch.randn(a.shape, generator=g) * 1e-2, torch.randn(b.shape, generator=g) * 1e-2
        assert objective((a + da) @ (b + db)) >= best * (1 - 1e-6)


def test_calibration_streams_counts_and_hidden_moment():
    model = tiny_llama()
    ids = torch.randint(1, VOCAB, (1000,))
    stats = collect_stats(model, ids, window=100, batch_size=3)
    assert stats.token_counts.sum() == 1000 and stats.token_counts.shape == (VOCAB,)
    with torch.no_grad():
        h = model.model(input_ids=ids.view(10, 100)).last_hidden_state.reshape(-1, 64).double()
    assert torch.allclose(stats.hidden_cov, h.T @ h / 1000, rtol=1e-4, atol=1e-6)


def test_banded_keeps_frequent_rows_exact_within_the_budget():
    from hf_factor_embed.factorize.banded import band_plan

    w, stats = _problem()
    f = get_method("banded").factorize(FactorizationTask(w, 6, ("input", "output"), stats))
    k, inner = band_plan(200, 24, 6, 0.3)
    assert f.dense_index.numel() == k and f.rank == inner
    assert k * 24 + inner * (200 + 24) <= 6 * (200 + 24)
    assert set(f.dense_index.tolist()) == set(
        torch.argsort(stats.token_counts, descending=True, stable=True)[:k].tolist()
    )


def test_patch_with_calibration_picks_the_banded_method(tmp_path, input_ids):
    from transformers import AutoModelForCausalLM

    model = hfe.patch_model(tiny_llama(), rank=16, calibration=torch.randint(1, VOCAB // 2, (600,)))
    emb = model.get_input_embeddings()
    assert model.config.quantization_config.method == "banded" and emb.num_dense_rows > 0
    assert model.lm_head.dense_rows is emb.dense_rows and model.lm_head.dense_index is emb.dense_index
    assert model.num_parameters() <= tiny_llama().num_parameters() - VOCAB * 64 + 16 * (VOCAB + 64)
    with torch.no_grad():
        expected = model(input_ids).logits
        # The band's rows are exact: the head's logits for them equal the dense head's.
        h = model.model(input_ids).last_hidden_state
        dense_w = emb.dense_weight()
        assert torch.allclose(expected, h @ dense_w.T, atol=1e-4)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.dense_rows is reloaded.model.embed_tokens.dense_rows
    assert torch.equal(reloaded(input_ids).logits, expected)


def test_calibration_text_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        hfe.patch_model(tiny_llama(), rank=8, calibration="some text")


@pytest.mark.real_model
def test_data_aware_default_beats_svd_on_smollm2(smollm2_dir, real_text, tmp_path):
    """On real text, at a small rank: the default with calibration is far better than plain SVD, and its
    checkpoint (with the dense band) reloads tied and identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_factor_embed.measure.perplexity import perplexity

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(real_text[:60_000], return_tensors="pt").input_ids[0]
    eval_ids, calib_ids = ids[:1024], ids[1024:5120]
    results = {}
    for method in ("svd", None):
        model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
        hfe.patch_model(model, rank=128, method=method, calibration=calib_ids if method is None else None)
        results[method] = perplexity(model, eval_ids, window=256)
    assert results[None] < results["svd"] / 10, results
    assert model.config.quantization_config.method == "banded"
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.dense_rows is reloaded.model.embed_tokens.dense_rows
    probe = eval_ids[:64].unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, model(probe).logits)


def test_rank_from_a_quality_target_on_held_out_text():
    from hf_factor_embed.measure.perplexity import perplexity

    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (3000,))
    dense = tiny_llama()
    holdout = ids[-1000:]
    dense_ppl = perplexity(dense, holdout, window=500)
    model = hfe.patch_model(tiny_llama(), target=1.02, calibration=ids, holdout_tokens=1000, method="svd")
    rank = model.get_input_embeddings().rank
    assert rank % 8 == 0 or rank == 64
    assert perplexity(model, holdout, window=500) <= 1.02 * dense_ppl * (1 + 1e-6)
    assert "chosen for target 1.02" in model.factor_embed_report.note
    smaller = hfe.patch_model(tiny_llama(), rank=max(rank - 8, 1), method="svd")
    assert rank == 8 or perplexity(smaller, holdout, window=500) > 1.02 * dense_ppl


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 1.1, "rank": 8}, "exactly one"),
        ({"target": 0.9, "calibration": torch.arange(100)}, ">= 1"),
        ({"target": 1.1}, "calibration"),
        ({"target": 1.1, "calibration": torch.arange(100)}, "holds out"),
    ],
)
def test_quality_target_refusals(kwargs, match):
    with pytest.raises(hfe.FactorEmbedError, match=match):
        hfe.patch_model(tiny_llama(), **kwargs)


def test_a_configured_method_instance_is_used_as_given():
    from hf_factor_embed.factorize.banded import BandedMethod

    calibration = torch.randint(1, VOCAB, (2000,), generator=torch.Generator().manual_seed(0))
    default = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration)
    wide = hfe.patch_model(tiny_llama(), rank=16, calibration=calibration, method=BandedMethod(band_share=0.9))
    assert wide.model.embed_tokens.num_dense_rows > 2 * default.model.embed_tokens.num_dense_rows
    assert wide.config.quantization_config.method == "banded"
    assert wide.factor_embed_report.method == "banded"
