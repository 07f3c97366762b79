"""Text as the model sees it: the ``<bos>`` its tokenizer puts in front of every text, and the special tokens that
frame every prompt.

Every window the product calibrates on, measures or trains on starts the way a real prompt starts. Dense Gemma-3
reads held-back Python reference text at perplexity 14.8 with ``<bos>`` first and 41.4 without
(``python benchmarks/bos.py``): a figure measured without it describes a regime the model never runs in, and hides
a checkpoint that broke ``<bos>``'s row. The special tokens (bos, eos,
pad, unk, mask, the chat template's markers, added special tokens) are in every prompt or answer, so every method
with a band keeps them as exact rows whatever the calibration scores say.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

#: The config attributes that name special token ids (the text config's, the model config's, the generation's).
_ID_ATTRIBUTES = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "mask_token_id",
    "sep_token_id",
    "cls_token_id",
    "decoder_start_token_id",
)
#: Reserved placeholders some tokenizers register as special (Gemma-3 has thousands of ``<unused123>``): never in
#: any text, so an exact row for each would spend the band on nothing.
_PLACEHOLDER = re.compile(r"^<?\[?(unused|reserved|extra_id|placeholder)[_-]?\w*\]?>?$", re.IGNORECASE)
#: Markers of other modalities that converted tokenizers register as added tokens without the special flag
#: (Gemma-3's ``<start_of_image>``, ``<end_of_image>``, ``[multimodal]``): never in text, so never scored into a band,
#: and a tail row for one won the argmax of an English prompt with diacritics (benchmarks/RESULTS.md, *generation*).
_MODALITY_MARKER = re.compile(r"^[<\[]/?\w*(start_of|end_of|image|audio|video|multimodal)\w*[>\]]$", re.IGNORECASE)


def bos_prefix(tokenizer) -> int | None:
    """The id the tokenizer puts in front of every text (Gemma's and LLaMA's ``<bos>``), or None where it puts
    none (GPT-2, SmolLM2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def special_token_ids(model, tokenizer=None) -> torch.Tensor:
    """Sorted ids of the model's special tokens within its vocabulary: those its configs name, the tokenizer's
    special tokens and its added special tokens, reserved placeholders left out, and added markers of other
    modalities (``<start_of_image>``) even where the tokenizer does not flag them special."""
    vocab = model.get_input_embeddings().weight.shape[0]
    ids: set[int] = set()
    configs = (model.config, model.config.get_text_config(), getattr(model, "generation_config", None))
    for config in (c for c in configs if c is not None):
        for attribute in _ID_ATTRIBUTES:
            value = getattr(config, attribute, None)
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer is not None:
        ids.update(getattr(tokenizer, "all_special_ids", ()))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        ids.update(i for i, token in added.items() if token.special and not _PLACEHOLDER.match(str(token)))
        ids.update(i for i, token in added.items() if _MODALITY_MARKER.match(str(token)))
    return torch.tensor(sorted(i for i in ids if isinstance(i, int) and 0 <= i < vocab), dtype=torch.long)


def model_windows(token_ids: torch.Tensor, window: int, bos_id: int | None = None) -> torch.Tensor:
    """``token_ids`` cut into consecutive ``window``-position rows (n x window), ``bos_id`` first in each where given
    (each row then holds ``window - 1`` tokens of text); a trailing partial window is dropped, and a text shorter
    than one window is one shorter row."""
    ids = token_ids.reshape(-1)
    prefix = ids.new_tensor([] if bos_id is None else [bos_id])
    body = window - prefix.numel()
    n = ids.numel() // body
    if n == 0:
        return torch.cat([prefix, ids])[None]
    rows = ids[: n * body].view(n, body)
    return torch.cat([prefix.expand(n, -1), rows], dim=1)


def describe_feed(bos_id: int | None, tokenizer=None) -> str:
    """How the windows were fed, for reports: '<bos> first in every window' or 'no prefix (the tokenizer adds none)'."""
    if bos_id is None:
        return "text as the tokenizer feeds it: no prefix (the tokenizer adds none)"
    name = tokenizer.convert_ids_to_tokens(bos_id) if tokenizer is not None else f"id {bos_id}"
    return f"text as the tokenizer feeds it: {name} (id {bos_id}) first in every window"


#: A tokenizer may hold fewer tokens than the embedding has rows (models pad V to a multiple of 64 or 128, and
#: reserve rows), but not far fewer: below this share it is another model's tokenizer.
_SMALLEST_VOCAB_SHARE = 0.9


def check_tokenizer(model, tokenizer) -> None:
    """Refuse a tokenizer that does not belong to ``model``: its ids would pick the wrong rows for the band and the
    statistics. Checked: the vocabulary's size against the embedding's rows (special ids are not compared: configs
    often carry defaults their tokenizers do not use)."""
    from ..errors import FactorEmbedError

    rows = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None  # a plain callable tokenizes too
    fix = "pass the tokenizer saved with this model (AutoTokenizer.from_pretrained on the same folder or name)"
    if size is not None and not _SMALLEST_VOCAB_SHARE * rows <= size <= rows:
        raise FactorEmbedError(
            f"the tokenizer has {size:,} tokens but the model's embedding {rows:,} rows: another model's "
            f"tokenizer? {fix}"
        )
    own = _saved_vocabulary(model, tokenizer)
    if own is not None and tokenizer.get_vocab() != own:
        raise FactorEmbedError(
            f"the tokenizer's vocabulary is not the one saved with the model in {model.name_or_path} (same size, "
            f"other ids): its ids would pick the wrong rows; {fix}"
        )


def _saved_vocabulary(model, tokenizer) -> dict | None:
    """The vocabulary saved beside the model, where its folder has one and the tokenizer came from elsewhere (a
    tokenizer loaded from the model's own folder is its own: nothing to compare)."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    if not hasattr(tokenizer, "get_vocab") or not str(folder) or not (folder / "tokenizer.json").is_file():
        return None
    if Path(str(getattr(tokenizer, "name_or_path", "") or "")).resolve() == folder.resolve():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()
