"""Training text through ``datasets``: load files or a Hub dataset, tokenize, pack into fixed-length blocks.

Blocks are consecutive, non-overlapping slices of one token stream, so splitting the block list splits the text:
the evaluation blocks are always the *last* ones and never overlap the training blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..calibration.model_text import bos_prefix
from ..calibration.sources import load_text  # noqa: F401  (part of the recovery API: recovery.load_text)
from ..errors import FactorEmbedError

if TYPE_CHECKING:
    from datasets import Dataset


def pack_blocks(texts: Dataset, tokenizer, block_size: int = 512) -> Dataset:
    """Tokenize every text, join them into one stream (EOS between texts where the tokenizer has one) and cut it
    into ``block_size``-token blocks (a trailing partial block is dropped): a Dataset with ``input_ids``. Each block
    starts with the ``<bos>`` the tokenizer puts before text, where it puts one (Gemma, LLaMA), so training sees
    text as the model serves it (:mod:`hf_factor_embed.calibration.model_text`)."""
    if block_size < 2:
        raise FactorEmbedError(f"block_size={block_size} is too small; use at least 2 tokens (e.g. 512)")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos_id = bos_prefix(tokenizer)
    prefix = [] if bos_id is None else [bos_id]
    body = block_size - len(prefix)

    def tokenize_and_pack(batch: dict) -> dict:
        stream: list[int] = []
        for text in batch["text"]:
            if text:
                stream += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        n = len(stream) // body
        return {"input_ids": [prefix + stream[i * body : (i + 1) * body] for i in range(n)]}

    # One batch for the whole dataset would hold everything in memory; 1000 texts at a time lose at most one
    # partial block per thousand texts.
    blocks = texts.map(tokenize_and_pack, batched=True, batch_size=1000, remove_columns=texts.column_names)
    if len(blocks) == 0:
        raise FactorEmbedError(f"the text holds fewer than {block_size} tokens; give more text or a smaller block")
    return blocks.with_format("torch")


def split_blocks(blocks: Dataset, eval_blocks: int) -> tuple[Dataset, Dataset]:
    """(training blocks, evaluation blocks): the last ``eval_blocks`` blocks evaluate, the rest train."""
    if not 0 < eval_blocks < len(blocks):
        raise FactorEmbedError(
            f"cannot hold back {eval_blocks} of {len(blocks)} blocks for evaluation; give more text or fewer "
            "evaluation blocks"
        )
    n = len(blocks)
    return blocks.select(range(n - eval_blocks)), blocks.select(range(n - eval_blocks, n))
