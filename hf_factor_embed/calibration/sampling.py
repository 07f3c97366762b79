"""Text a causal LM writes itself, sampled reproducibly: the model's own distribution, for calibration (the
``generated`` source: English as the model writes it) and for recovery (a teacher's text, data-free).

Sampling runs in batches with the KV cache (``generate``) under a seed of its own (:class:`GumbelSampler`); the
caller gives the prompts it starts from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import FactorEmbedError

logger = logging.getLogger(__name__)

#: ``starts(tokenizer, count, generator)``: ``count`` prompts as token ids.
Starts = Callable[[object, int, torch.Generator], list[list[int]]]


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
def sample_texts(
    teacher, tokenizer, tokens: int, config: GenerationConfig, starts: Starts, progress: bool = True
) -> tuple[list[str], dict]:
    """About ``tokens`` tokens of text ``teacher`` samples after the prompts ``starts(tokenizer, count, generator)``
    makes (token ids, ``<bos>`` first where the tokenizer adds it), under ``config.seed``: the texts (empty and
    near-duplicate ones dropped), and what making them cost: seconds, tokens kept, positions decoded."""
    generator = torch.Generator().manual_seed(config.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(teacher.parameters()).device
    texts, seen, made = [], set(), 0
    was_training = teacher.training
    teacher.eval()
    bar = tqdm(total=tokens, desc="sampling text", unit="tok", disable=not progress)
    started = time.perf_counter()
    batch_index = barren = decoded = 0
    while made < tokens:
        if barren >= 3:
            raise FactorEmbedError("the model wrote only empty or repeated text in 3 batches; check the model")
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
    logger.info("sampled %d tokens in %.1f s (%.0f tokens/s)", made, seconds, made / max(seconds, 1e-9))
    return texts, {"seconds": seconds, "tokens": made, "decoded_positions": decoded, "tokens_per_s": made / seconds}
