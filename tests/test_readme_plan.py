"""The README's and pages' commands on the product-coded tail and the plan, and analyze: the second chain of
test_readme.py's (each reads only the folders its own compress writes), in a file of its own so that xdist runs it
beside the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_readme import in_second_chain, run_readme_commands

pytestmark = pytest.mark.real_model


def test_the_plan_and_product_code_commands_run_as_written(tmp_path, monkeypatch, capsys, real_text):
    run_readme_commands(in_second_chain, tmp_path, monkeypatch, capsys, real_text)
    # analyze: SmolLM2's 576 singular values and the rank its 30% budget buys
    (embedding,) = json.loads(Path("out/a/summary.json").read_text())["embeddings"]
    assert embedding["shape"] == [49152, 576] and len(embedding["singular_values"]) == 576
    assert embedding["budget"]["rank"] == int(0.3 * 49152 * 576 // (49152 + 576))
    # recover --train codebooks on the real SmolLM2's product codes: the centroids moved, nothing else
    from safetensors.torch import load_file

    before, after = (load_file(f"out/smollm2-pq{suffix}/model.safetensors") for suffix in ("", "-cheap"))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert before.keys() == after.keys() and moved and all("codebooks" in k for k in moved), moved
    assert json.loads(Path("out/smollm2-pq-cheap/recovery.json").read_text())["mode"] == "cheap"
    # the shortlist head (a product-coded tail, `compress --tail pq`) in ExecuTorch: the full head's greedy tokens
    report = json.loads(Path("out/smollm2-pq-pte/export.json").read_text())
    assert report["identical"] and report["head"] == "shortlist:8192", report
    # the plan's command ran on SmolLM2: within its budget, every candidate recorded, the chosen one saved
    info = json.loads(Path("out/smollm2-plan/compression.json").read_text())
    plan = info["plan"]
    # SmolLM2's width 576: low rank and product codes of 16, 8, 6 and 4 values a byte (5 does not divide it)
    assert plan["budget_share"] == 0.15 and [c["name"] for c in plan["candidates"]] == [
        "lowrank",
        "pq16",
        "pq8",
        "pq6",
        "pq4",
    ]
    assert all(c["stored_bytes"] <= plan["budget_bytes"] for c in plan["candidates"])
    assert info["embedding_bytes"]["stored"] <= plan["budget_bytes"] and info["reload"]["identical"]
    # SmolLM2's own English served beside the file and German; judged by KL divergence from dense, exact
    assert info["served"]["generated"].startswith("the model's own text") and plan["judged_by"] == "kld"
    assert all(0 <= e["kld"] and 0 <= e["same_top"] <= 1 for e in info["evaluation"].values())
    assert info["tail"] == next(c["tail"] for c in plan["candidates"] if c["name"] == plan["chosen"])
