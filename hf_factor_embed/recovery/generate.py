"""Text the teacher writes itself, for recovery when the user has little text of every kind the model will serve.

Data-free distillation (LLM-QAT; "self-calibration"): the dense teacher samples text from many starts, the
student learns the teacher's distribution on it. Starts are varied on purpose, so the text covers more than one
kind: a random first token from the vocabulary, a short prompt of one of several kinds of text and languages, and
for a model with a chat template, a user request through that template. Sampling runs in batches with the KV cache
(``generate``), under a seed (:mod:`hf_factor_embed.calibration.sampling`); near-duplicates (the same first 64
characters) are dropped. The result is a
``datasets.Dataset`` with a ``text`` column, cached on disk under a key of the teacher, the settings and the seed,
so a second run with the same arguments reads it back instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..calibration.sampling import GenerationConfig, GumbelSampler, sample_texts
from ..errors import FactorEmbedError
from ..options import is_whole

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

#: Short openings of several kinds of text and languages: code, legal, release notes, prose, dialogue, messages.
PROMPTS = (
    "def ",
    "The following",
    "Copyright (C)",
    "  * Fix ",
    "Once upon a time",
    "Question:",
    "Error: cannot",
    "In this chapter",
    "Der ",
    "La ",
    "El ",
    "Это ",
    "这个",
    "これは",
)
#: User requests for chat-tuned teachers, through their own chat template.
REQUESTS = (
    "Write a short story.",
    "Explain how a hash table works.",
    "Summarize the terms of a software license.",
    "Write release notes for a small bug-fix release.",
    "Describe your favourite city.",
    "Write a Python function that parses a date.",
    "Translate 'good morning, how are you?' into German.",
    "Give three tips for writing clear error messages.",
)


def self_generate(
    teacher,
    tokenizer,
    tokens: int,
    *,
    config: GenerationConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Dataset:
    """About ``tokens`` tokens of text sampled from ``teacher`` (a causal LM), as a Dataset with a ``text`` column."""
    from datasets import Dataset, DatasetInfo, load_from_disk

    config = config or GenerationConfig()
    _check(teacher, tokens, config)
    folder = None if cache_dir is None else Path(cache_dir) / _cache_key(teacher, tokens, config)
    if folder is not None and (folder / "dataset_info.json").is_file():
        logger.info("self-generated text read from %s", folder)
        return load_from_disk(str(folder))
    texts, stats = sample_texts(teacher, tokenizer, tokens, config, starts, progress)
    # How it was made travels with the text (``data.info.description``), cached or not.
    info = DatasetInfo(description=json.dumps({"generation": asdict(config), **stats}))
    data = Dataset.from_dict({"text": texts}, info=info)
    if folder is not None:
        data.save_to_disk(str(folder))
    return data


def check_tokens(tokens) -> None:
    """A count of tokens to generate must be a positive integer (checked before any model loads)."""
    if not is_whole(tokens) or tokens <= 0:
        raise FactorEmbedError(f"--self-generate {tokens!r}: give a positive number of tokens to generate")


def _check(teacher, tokens: int, config: GenerationConfig) -> None:
    check_tokens(tokens)
    can_generate = getattr(teacher, "can_generate", None)
    if can_generate is None or not can_generate():
        raise FactorEmbedError(
            f"the teacher ({type(teacher).__name__}) has no generation head, so it cannot write text; "
            "give a causal language model, or train on --text / --dataset"
        )
    if config.batch_size < 1 or config.max_new_tokens < 1:
        raise FactorEmbedError("batch_size and max_new_tokens must be at least 1")


def _cache_key(teacher, tokens: int, config: GenerationConfig) -> str:
    identity = {
        "teacher": getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__,
        "config": teacher.config.to_diff_dict(),
        "tokens": tokens,
        "generation": asdict(config),
    }
    return "selfgen-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def starts(tokenizer, count: int, generator: torch.Generator) -> list[list[int]]:
    """``count`` prompts as token ids, cycling over three kinds: a random vocabulary token, a short prompt of
    :data:`PROMPTS`, and (for a tokenizer with a chat template) a request of :data:`REQUESTS` in that template."""
    special = set(tokenizer.all_special_ids)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    kinds = ["random", "prompt", "chat"] if getattr(tokenizer, "chat_template", None) else ["random", "prompt"]
    out = []
    for i in range(count):
        pick = int(torch.randint(0, 1 << 30, (1,), generator=generator))
        kind = kinds[i % len(kinds)]
        if kind == "random":
            token = pick % len(tokenizer)
            while token in special:
                token = (token + 1) % len(tokenizer)
            out.append(bos + [token])
        elif kind == "prompt":
            out.append(bos + tokenizer(PROMPTS[pick % len(PROMPTS)], add_special_tokens=False)["input_ids"])
        else:
            message = [{"role": "user", "content": REQUESTS[pick % len(REQUESTS)]}]
            text = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


__all__ = ["PROMPTS", "REQUESTS", "GenerationConfig", "GumbelSampler", "check_tokens", "self_generate", "starts"]
