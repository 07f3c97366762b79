"""The plan (``compress --max-bytes``): budgets parsed, bytes counted as stored, candidates within the budget, the
choice rule, and the whole path on a tiny model (tests/test_readme.py runs the README's plan on SmolLM2)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_tokenizer, tiny_words

import hf_factor_embed as hfe
from hf_factor_embed import FactorEmbedError
from hf_factor_embed.factorize.ranks import largest_saving_rank
from hf_factor_embed.pipeline.budget import budget_bytes, candidates, check_budget, parse_max_bytes
from hf_factor_embed.pipeline.compress import compress
from hf_factor_embed.pipeline.plan import choose, metric_of
from hf_factor_embed.quantizer.sizes import embedding_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.08", ("share", 0.08)), ("40MB", ("bytes", 4e7)), ("38MiB", ("bytes", 38 * 2**20)), ("1e6", ("bytes", 1e6))],
)
def test_budget_is_a_share_or_a_size(text, expected):
    assert parse_max_bytes(text) == expected
    assert budget_bytes(parse_max_bytes("0.25"), 1000) == 250


@pytest.mark.parametrize("text", ["lots", "0", "1", "-0.1", "8%", "40 parsecs"])
def test_bad_budget_is_refused(text):
    with pytest.raises(FactorEmbedError, match="--max-bytes"):
        parse_max_bytes(text)


def test_planned_bytes_are_the_stored_bytes_and_within_budget():
    model = tiny_llama(vocab=3000)
    ids = torch.randint(0, 3000, (3000,), generator=torch.Generator().manual_seed(0))
    v, d = model.get_input_embeddings().weight.shape
    budget = int(0.4 * v * d * 4)
    found = candidates(v, d, budget, bits=4, special_rows=1)
    assert {c.tail for c in found} == {"lowrank", "pq"}
    for candidate in found:
        patched = hfe.patch_model(
            copy.deepcopy(model), rank=candidate.rank, method=candidate.method(), calibration=ids, bits=4
        )
        stored = embedding_bytes(patched)["stored"]
        assert stored == candidate.planned_bytes <= budget
        assert patched.get_input_embeddings().dense_index.numel() == candidate.band_rows
        bigger = candidates(v, d, stored + 4000, bits=4, special_rows=1, formats=(candidate.name,))
        assert bigger[0].planned_bytes > stored or candidate.rank == largest_saving_rank(v, d)  # the largest fit


def test_a_budget_below_the_smallest_plan_is_one_line():
    with pytest.raises(FactorEmbedError, match="smallest plan needs"):
        check_budget(100, VOCAB, 64, VOCAB * 64 * 4, bits=4)
    with pytest.raises(FactorEmbedError, match="nothing to compress"):
        check_budget(VOCAB * 64 * 4, VOCAB, 64, VOCAB * 64 * 4, bits=4)


def test_choice_takes_the_guard_then_served_text_then_what_is_not_served():
    def record(name, served, unserved, worse):
        return {"name": name, "ratio": {"a": served, "x": unserved}, "worse_than_trim": worse}

    measured = [record("many rows", 1.000, 40.0, ["x"]), record("codes", 1.04, 2.0, []), record("bad", 1.2, 1.1, [])]
    chosen, reason = choose(measured, ["a"])
    assert chosen["name"] == "codes" and "2 of 3" in reason  # within 5% on served text, and not worse than trimming
    chosen, _ = choose([measured[0], record("codes", 1.08, 2.0, [])], ["a"])
    assert chosen["name"] == "many rows"  # 8% worse on what is served is not bought back elsewhere
    chosen, _ = choose(
        [record("close", 1.01, 3.0, []), record("far", 1.04, 2.0, []), record("best", 1.0, 9.0, [])], ["a"]
    )
    assert chosen["name"] == "close"  # all guarded: within 2% of the best on served text first, then what is not served
    chosen, _ = choose([record("one", 1.0, 2.0, []), record("two", 1.01, 2.0, [])], ["a"])
    assert chosen["name"] == "one"  # and then served text


def test_choice_judges_served_text_by_kl_divergence_where_every_candidate_has_it():
    """Perplexity ratios and KL divergence can rank two candidates apart: a ratio averages over the text's own
    tokens, KL divergence over dense's whole distribution. Where KL divergence is measured, it decides."""

    def record(name, ratio, kld, unserved_kld):
        fidelity = {"a": {"kld": kld, "same_top": 0.9}, "x": {"kld": unserved_kld, "same_top": 0.8}}
        return {"name": name, "ratio": {"a": ratio, "x": 2.0}, "fidelity": fidelity, "worse_than_trim": []}

    # "ratio" is 10% better in perplexity and 0.1 nats worse in KL divergence on the served source
    by_ratio, by_kld = record("ratio", 1.00, 0.15, 0.3), record("kld", 1.10, 0.05, 0.3)
    chosen, reason = choose([by_ratio, by_kld], ["a"])
    assert chosen["name"] == "kld" and "KL divergence 0.0500" in reason
    assert metric_of([by_ratio, by_kld]) == "kld"
    without = [{k: v for k, v in c.items() if k != "fidelity"} for c in (by_ratio, by_kld)]
    assert choose(without, ["a"])[0]["name"] == "ratio" and metric_of(without) == "ratio"  # the perplexity rule
    # within ln 1.02 of the best on served text, the sources not served decide (mean KL divergence)
    close = [record("close", 1.0, 0.05, 0.9), record("near", 1.0, 0.06, 0.2)]
    assert choose(close, ["a"])[0]["name"] == "near"
    # a KL divergence target: those meeting it are eligible
    assert choose(close, ["a"], target_kld=0.055)[0]["name"] == "close"


def test_target_kld_searches_the_smallest_budget_that_keeps_it():
    from hf_factor_embed.pipeline.plan import describe, run_target

    model = tiny_llama(vocab=3000)
    stub = _stub_plan(model, lambda share: 1.0)
    ratios = stub["measure"]
    # KL divergence from dense falls as the budget grows; the perplexity ratio says nothing (always 1.0)
    stub["measure"] = lambda m: {
        n: {"perplexity": r, "kld": 0.0015 / (stub["stored_bytes_of"](m) / stub["fp32_bytes"])}
        for n, r in ratios(m).items()
    }
    _, record = run_target(model, target_kld=0.01, **stub)
    assert record["target_met"] and record["target_kld"] == 0.01 and "target" not in record
    assert record["judged_by"] == "kld" and 0.15 <= record["budget_share"] <= 0.2  # 0.0015 / 0.15 = 0.01
    assert all(p["met"] == (p["worst_served"] <= 0.01) for p in record["search"])
    assert "--target-kld 0.01" in describe(record)[0] and "KL divergence" in record["reason"]


@pytest.fixture
def served(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "dense")
    tiny_tokenizer().save_pretrained(tmp_path / "dense")
    (tmp_path / "served.txt").write_text(tiny_words(3000, seed=3))
    (tmp_path / "other.txt").write_text(tiny_words(1000, seed=9))
    return tmp_path


def test_compress_plans_by_default_with_sources_and_records_every_candidate(served):
    info = compress(
        served / "dense",
        served / "out",
        serve=[served / "served.txt"],
        measure=[served / "other.txt"],
        plots=False,
        eval_tokens=256,
    )
    plan = info["plan"]
    assert plan["budget_share"] == 0.08 and info["requested"] == {"max_bytes": "0.08"}
    assert plan["candidates"] and all(c["stored_bytes"] <= plan["budget_bytes"] for c in plan["candidates"])
    assert plan["chosen"] in {c["name"] for c in plan["candidates"]} and plan["reason"]
    assert set(plan["trim"]["ratio"]) == {"served", "other"}
    assert info["embedding_bytes"]["stored"] <= plan["budget_bytes"]
    assert info["reload"] == {"identical": True, "tied": True, "factorized_layers": 2}
    assert json.loads((served / "out" / "compression.json").read_text())["plan"]["chosen"] == plan["chosen"]
    # what a user reads: each measured text's first words continued greedily, beside dense's, in the report and card
    assert {c["group"] for c in info["continuations"]} == {"served", "other"}
    assert all(c["dense"] and c["ours"] for c in info["continuations"])
    card = (served / "out" / "README.md").read_text()
    assert "What a user reads" in card and info["continuations"][0]["prompt"] in card
    assert "How the bytes were spent" in card and plan["chosen"] in card
    # fidelity as quantization is judged: every candidate and every text, the chosen candidate's in the evaluation
    assert all(set(c["fidelity"]) == {"served", "other"} for c in plan["candidates"])
    chosen = next(c for c in plan["candidates"] if c["name"] == plan["chosen"])
    for name, e in info["evaluation"].items():
        assert e["kld"] == chosen["fidelity"][name]["kld"] >= 0 and 0 <= e["same_top"] <= 1
    assert "KL divergence" in card


def test_the_guard_ignores_sources_kept_within_5_percent_of_dense():
    from hf_factor_embed.pipeline.plan import _behind

    assert not _behind(1.03, 0.999)  # a little behind trimming, but kept
    assert _behind(40.0, 2.0) and not _behind(2.0, 40.0)


def test_planned_bytes_follow_the_group_size():
    model = tiny_llama(vocab=3000)
    ids = torch.randint(0, 3000, (3000,), generator=torch.Generator().manual_seed(0))
    (candidate,) = candidates(3000, 64, 60000, bits=4, group_size=16, special_rows=1, formats=("lowrank",))
    patched = hfe.patch_model(
        model, rank=candidate.rank, method=candidate.method(), calibration=ids, bits=4, group_size=16
    )
    assert embedding_bytes(patched)["stored"] == candidate.planned_bytes


def _stub_plan(model, quality_at, other_at=lambda share: 2.0):
    """run_target's keywords with measurements that depend only on the candidate's stored bytes (trimming: 50x
    dense on the source not served)."""
    share = {}

    def patch(copy, candidate):
        share[id(copy)] = candidate.planned_bytes
        return copy

    fp32 = model.get_input_embeddings().weight.numel() * 4
    return dict(
        fp32_bytes=fp32,
        patch=patch,
        measure=lambda m: {"served": quality_at(share[id(m)] / fp32), "other": other_at(share[id(m)] / fp32)},
        measure_trim=lambda rows: {"served": 1.0, "other": 50.0},
        dense_perplexity={"served": 1.0, "other": 1.0},
        stored_bytes_of=lambda m: share[id(m)],
        served=["served"],
        bits=4,
        special_rows=1,
    )


def test_a_quality_target_keeps_the_smallest_budget_that_meets_it():
    from hf_factor_embed.pipeline.plan import TARGET_SHARES, describe, run_target

    model = tiny_llama(vocab=3000)
    _, record = run_target(model, target=1.02, **_stub_plan(model, lambda share: 1.0 + 0.0029 / share))
    assert record["target_met"] and record["budget_share"] <= 0.15  # 0.0029/0.15 < 0.02: the first share that meets
    tried = {p["budget_share"]: p["met"] for p in record["search"]}
    assert len(tried) <= 5 < len(TARGET_SHARES)  # bisection, not a sweep
    assert all(met == (share >= record["budget_share"]) for share, met in tried.items())
    assert all(p["budget_share"] < record["budget_share"] for p in record["search"] if not p["met"])
    assert "within 1.02x dense" in record["reason"] and "target 1.02" in describe(record)[0]
    # met on served text from 4% on, but behind trimming on what is not served below 10%: the guard decides
    _, guarded = run_target(
        model, target=1.02, **_stub_plan(model, lambda share: 1.0, lambda share: 200.0 if share < 0.095 else 2.0)
    )
    assert guarded["target_met"] and 0.1 <= guarded["budget_share"] <= 0.12
    assert any(p["worse_than_trim"] == ["other"] and not p["met"] for p in guarded["search"])
    _, missed = run_target(model, target=1.0001, **_stub_plan(model, lambda share: 1.01))
    assert not missed["target_met"] and missed["budget_share"] == max(p["budget_share"] for p in missed["search"])


def test_compress_with_sources_and_a_target_plans_the_budget(served):
    info = compress(
        served / "dense",
        served / "out",
        serve=[served / "served.txt"],
        measure=[],
        target=1.5,
        plots=False,
        eval_tokens=256,
    )
    plan = info["plan"]
    assert info["requested"] == {"target": 1.5} and plan["target"] == 1.5 and plan["search"]
    kept = next(c for c in plan["candidates"] if c["name"] == plan["chosen"])
    assert plan["target_met"] == (kept["ratio"]["served"] <= 1.5)
    assert info["embedding_bytes"]["stored"] <= plan["budget_bytes"] and info["reload"]["identical"]


@pytest.mark.real_model
def test_a_quality_target_on_smollm2_keeps_the_smallest_budget_that_meets_it(
    smollm2_dir, real_text, tmp_path, monkeypatch
):
    import hf_factor_embed.pipeline.plan as plan_module

    monkeypatch.setattr(plan_module, "TARGET_SHARES", (0.06, 0.15))  # two budgets: a plan or two on 2 cores
    (tmp_path / "served.txt").write_text(real_text[20000:32000])
    info = compress(
        smollm2_dir,
        tmp_path / "out",
        serve=[tmp_path / "served.txt"],
        measure=["licenses"],
        target=1.03,
        calibration_tokens=512,
        eval_tokens=256,
        plots=False,
    )
    plan = info["plan"]
    tried = {p["budget_share"]: p for p in plan["search"]}
    assert set(tried) <= {0.06, 0.15} and plan["budget_share"] in tried
    kept = next(c for c in plan["candidates"] if c["name"] == plan["chosen"])
    assert plan["target_met"] == (kept["ratio"]["served"] <= 1.03) == tried[plan["budget_share"]]["met"]
    if plan["target_met"] and plan["budget_share"] == 0.15:
        assert not tried[0.06]["met"]  # the smaller budget was tried and missed
    assert info["embedding_bytes"]["stored"] <= plan["budget_bytes"]
    assert info["reload"] == {"identical": True, "tied": True, "factorized_layers": 2}
