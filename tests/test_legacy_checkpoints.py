"""Checkpoints written by the release before the package's redesign (tests/data/release-0.1, tiny LLaMA models
saved by ``patch_model`` + ``save_pretrained`` of that release) still load, tied, with the logits they had."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_factor_embed import FactorizedLayer

RELEASE = Path(__file__).parent / "data" / "release-0.1"


@pytest.mark.parametrize("name", ["lowrank-float", "pq-int4"])
def test_a_checkpoint_of_the_previous_release_loads_with_its_logits(name):
    model = AutoModelForCausalLM.from_pretrained(RELEASE / name).eval()
    assert isinstance(model.get_input_embeddings(), FactorizedLayer)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 33)[None]).logits
    assert torch.equal(logits, torch.load(RELEASE / name / "expected_logits.pt"))
