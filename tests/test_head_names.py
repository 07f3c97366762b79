"""The generic fallback on architectures whose head is not a module called ``lm_head``, or whose checkpoints name
it otherwise (GPT-NeoX keeps ``lm_head`` in memory and writes ``embed_out`` on disk): patch, save, reload through
the Auto class, identical logits, ties kept, fewer bytes, and loud without the plugin."""

from __future__ import annotations

import pytest
import torch
import transformers
from test_autoload import python
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

import hf_factor_embed as hfe
from hf_factor_embed import FactorizedEmbedding, FactorizedLMHead

V, D, RANK = 1000, 16, 4
SMALL = {"vocab_size": V, "hidden_size": D, "num_hidden_layers": 2, "num_attention_heads": 2}

# (config class, its keyword arguments, model class, Auto class to reload with, head attribute in memory)
ARCHITECTURES = {
    "gpt_neox_untied": ("GPTNeoXConfig", {**SMALL, "intermediate_size": 32}, "GPTNeoXForCausalLM", "causal", "lm_head"),
    "gpt_neox_tied": (
        "GPTNeoXConfig",
        {**SMALL, "intermediate_size": 32, "tie_word_embeddings": True},
        "GPTNeoXForCausalLM",
        "causal",
        "lm_head",
    ),
    "gpt_neox_japanese": (
        "GPTNeoXJapaneseConfig",
        {**SMALL, "intermediate_multiple_size": 2},
        "GPTNeoXJapaneseForCausalLM",
        "causal",
        "embed_out",
    ),
    "biogpt": ("BioGptConfig", {**SMALL, "intermediate_size": 32}, "BioGptForCausalLM", "causal", "output_projection"),
    "distilbert": (
        "DistilBertConfig",
        {"vocab_size": V, "dim": D, "n_layers": 2, "n_heads": 2, "hidden_dim": 32},
        "DistilBertForMaskedLM",
        "masked",
        "vocab_projector",
    ),
    "rwkv": (
        "RwkvConfig",
        {
            "vocab_size": V,
            "hidden_size": D,
            "num_hidden_layers": 2,
            "attention_hidden_size": D,
            "intermediate_size": 32,
        },
        "RwkvForCausalLM",
        "causal",
        "head",
    ),
    "xlnet": (
        "XLNetConfig",
        {"vocab_size": V, "d_model": D, "n_layer": 2, "n_head": 2, "d_inner": 32},
        "XLNetLMHeadModel",
        "causal",
        "lm_loss",
    ),
}
AUTO = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM}


def build(name: str):
    config_class, kwargs, model_class, _, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs)).eval()
    with torch.no_grad():  # a non-zero head bias where there is one, so that keeping it is checked
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:
            bias.normal_()
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def is_tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def weight_bytes(folder) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("bits", [None, 8])
def test_head_of_another_name_round_trips(name, bits, tmp_path):
    ids = torch.randint(1, V, (2, 10), generator=torch.Generator().manual_seed(1))
    dense = build(name)
    head_attr, was_tied = ARCHITECTURES[name][4], is_tied(dense)
    dense.save_pretrained(tmp_path / "dense")

    model = hfe.patch_model(dense, rank=RANK, bits=bits)
    assert isinstance(getattr(model, head_attr), FactorizedLMHead)
    assert isinstance(model.get_input_embeddings(), FactorizedEmbedding)
    assert is_tied(model) == was_tied
    expected = logits(model, ids)
    model.save_pretrained(tmp_path / "f")

    reloaded = AUTO[ARCHITECTURES[name][3]].from_pretrained(tmp_path / "f").eval()
    assert isinstance(getattr(reloaded, head_attr), FactorizedLMHead)
    assert torch.equal(logits(reloaded, ids), expected)
    assert is_tied(reloaded) == was_tied
    assert weight_bytes(tmp_path / "f") < weight_bytes(tmp_path / "dense")


def test_gpt_neox_checkpoint_fails_loudly_without_the_plugin(tmp_path):
    hfe.patch_model(build("gpt_neox_untied"), rank=RANK).save_pretrained(tmp_path / "f")
    import sysconfig

    result = python(
        f"""
        import sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(tmp_path / "f")!r})
        """,
        "-S",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Unknown quantization type, got hf_factor_embed" in result.stderr
