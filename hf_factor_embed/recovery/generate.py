"""Text the teacher writes itself, for recovery when the user has little text of every kind the model will serve.

Data-free distillation (LLM-QAT; "self-calibration"): the dense teacher samples text from many starts, the
student learns the teacher's distribution on it. Starts are varied on purpose, so the text covers more than one
kind: a random first token from the vocabulary, a short prompt of one of several kinds of text and languages, and
for a model with a chat template, a user request through that template. Sampling runs in batches with the KV cache
(``generate``), under a seed; near-duplicates (the same first 64 characters) are dropped. The result is a
``datasets.Dataset`` with a ``text`` column, cached on disk under a key of the teacher, the settings and the seed,
so a second run with the same arguments reads it back instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

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


@dataclass(frozen=True)
class GenerationConfig:
    """How the teacher samples. Plain sampling from the teacher's distribution (temperature 1, no top-k, no
    top-p) because it transferred best: a refit on 8k generated tokens brought SmolLM2 r=128 on licenses /
    changelogs / German to 2.86x / 2.23x / 8.07x of dense, against 3.34x / 2.53x / 8.94x with top-k 50 and top-p
    0.95, and 3.53x / 2.68x / 9.42x at temperature 0.7 (``python benchmarks/sampling.py``). Batches of 128 rows
    of 128 new tokens: the fastest measured on a 2-core CPU (16 rows: 97 tokens/s; 128: 220; 256: 201)."""

    batch_size: int = 128
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    top_p: float = 1.0
    seed: int = 0


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
    texts, stats = _sample(teacher, tokenizer, tokens, config, progress)
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


class GumbelSampler(LogitsProcessor):
    """Temperature, top-k and top-p sampling as one logits processor, drawn by the Gumbel-max trick.

    ``argmax(logits / T + Gumbel noise)`` is an exact sample of ``softmax(logits / T)``; taken over the top-k
    candidates only (``topk`` on 128 rows x 49k tokens costs a few ms, where ``generate``'s own top-p sorts the
    whole vocabulary and ``multinomial`` walks it: together 0.3 s per step of a 128-row batch on 2 cores), with
    top-p applied within them. It returns scores where only the drawn token is finite, so greedy decoding
    emits it. The noise comes from its own ``torch.Generator``: the text depends on the seed, not on global state.
    """

    def __init__(self, config: GenerationConfig, generator: torch.Generator) -> None:
        self.config, self.generator = config, generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.config.temperature
        k = self.config.top_k if 0 < self.config.top_k < scores.shape[-1] else scores.shape[-1]
        if k == scores.shape[-1] and self.config.top_p >= 1.0:  # the whole vocabulary: nothing to sort
            values, index = scores, None
        else:
            values, index = scores.topk(k, dim=-1)  # sorted, largest first
        if self.config.top_p < 1.0:
            probs = values.softmax(-1)
            values = values.masked_fill(probs.cumsum(-1) - probs > self.config.top_p, float("-inf"))
        uniform = torch.rand(values.shape, generator=self.generator, device=values.device)
        choice = (values - torch.log(-torch.log(uniform.clamp_min(1e-20)))).argmax(-1, keepdim=True)
        token = choice if index is None else index.gather(-1, choice)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


@torch.no_grad()
def _sample(teacher, tokenizer, tokens: int, config: GenerationConfig, progress: bool) -> tuple[list[str], dict]:
    """The texts, and what making them cost: seconds, tokens kept, positions decoded (kept or not)."""
    generator = torch.Generator().manual_seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(teacher.parameters()).device
    texts, seen, made = [], set(), 0
    was_training = teacher.training
    teacher.eval()
    bar = tqdm(total=tokens, desc="self-generate", unit="tok", disable=not progress)
    started = time.perf_counter()
    batch_index = barren = decoded = 0
    while made < tokens:
        if barren >= 3:
            raise FactorEmbedError("the teacher wrote only empty or repeated text in 3 batches; check the teacher")
        before = made
        # A small request samples a few rows, not a whole batch of max_new_tokens each.
        rows = min(config.batch_size, -(-(tokens - made) // config.max_new_tokens))
        prompts = starts(tokenizer, rows, generator)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sampler = GumbelSampler(config, torch.Generator(device).manual_seed(config.seed * 100_003 + batch_index))
        out = teacher.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,  # the sampler has already drawn: greedy decoding picks its one remaining token
            logits_processor=LogitsProcessorList([sampler]),
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad,
            use_cache=True,
        )
        batch_index += 1
        decoded += out[:, width:].numel()
        for row in out[:, width:]:
            row = row[row != pad] if pad is not None else row
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            if len(text) < 16 or text[:64] in seen:
                continue
            seen.add(text[:64])
            texts.append(text)
            made += row.numel()
            bar.update(row.numel())
        barren = barren + 1 if made == before else 0
    bar.close()
    teacher.train(was_training)
    seconds = time.perf_counter() - started
    logger.info("self-generated %d tokens in %.1f s (%.0f tokens/s)", made, seconds, made / max(seconds, 1e-9))
    return texts, {"seconds": seconds, "tokens": made, "decoded_positions": decoded, "tokens_per_s": made / seconds}
