"""The ``generated`` source: English as the model itself writes it.

A user who serves "English" means the English the model writes, not two technical corpora: general words
("algae" in a photosynthesis prompt) are rare in Python's reference and Debian changelogs, so they end in the
tail. ``--calibration generated`` samples the model's own text after the model loads (from ``<bos>`` alone and
from short neutral English openings, plain sampling at temperature 1 under a fixed seed, as the recovery's
self-generation samples: :mod:`.sampling`), then holds back part of it and measures it like any served source.
``generated:<tokens>`` sets how much; by default enough for the calibration tokens and the held-back windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FactorEmbedError

GENERATED = "generated"
#: Short neutral English openings; "" is ``<bos>`` alone (the model's unconditional text).
OPENINGS = ("", "The", "In", "A", "It", "This", "We", "When", "One", "There", "I", "After")
#: The seed ``compress`` samples with: the same model and size give the same text.
SEED = 0


@dataclass(frozen=True)
class GeneratedSource:
    """A ``generated`` source before the model loads: how many tokens to sample (None: as many as needed)."""

    tokens: int | None = None
    seed: int = SEED
    name: str = GENERATED

    @property
    def origin(self) -> str:
        return f"the model's own text, sampled from <bos> and short neutral English openings (seed {self.seed})"

    def tokens_needed(self, calibration_tokens: int, eval_tokens: int, held_back: float | None) -> int:
        """The tokens to sample: as given, else enough that the calibration part holds ``calibration_tokens`` and
        the held-back part ``eval_tokens`` (``held_back`` None: measured only, ``eval_tokens``), with 10% spare."""
        if self.tokens is not None:
            return self.tokens
        if held_back is None:
            return int(1.1 * eval_tokens)
        return int(1.1 * max(calibration_tokens / (1 - held_back), eval_tokens / held_back))


def is_generated(spec) -> bool:
    return str(spec) == GENERATED or str(spec).startswith(GENERATED + ":")


def parse_generated(spec) -> GeneratedSource:
    """``generated`` or ``generated:<tokens>``; a bad size is one line naming the form."""
    spec = str(spec)
    if spec == GENERATED:
        return GeneratedSource()
    size = spec[len(GENERATED) + 1 :]
    if not size.isdigit() or int(size) < 64:
        raise FactorEmbedError(
            f"{spec!r}: give the tokens to sample as a whole number of at least 64 (e.g. generated:8192), or "
            "plain 'generated' for as many as the calibration and the held-back windows need"
        )
    return GeneratedSource(int(size))


def english_starts(tokenizer, count: int, generator: torch.Generator) -> list[list[int]]:
    """``count`` prompts: ``<bos>`` (where the tokenizer adds it) and one of :data:`OPENINGS` drawn by
    ``generator``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = []
    for _ in range(count):
        opening = OPENINGS[int(torch.randint(0, len(OPENINGS), (1,), generator=generator))]
        ids = bos + (tokenizer(opening, add_special_tokens=False)["input_ids"] if opening else [])
        out.append(ids or [tokenizer.eos_token_id])  # no <bos> and no opening: start after an end of text
    return out


def generated_text(model, tokenizer, source: GeneratedSource, tokens: int, progress: bool = True) -> str:
    """About ``tokens`` tokens the model samples from :func:`english_starts`, one text a line."""
    from .sampling import GenerationConfig, sample_texts

    if not hasattr(model, "generate") or not model.can_generate():
        raise FactorEmbedError(
            f"--calibration {GENERATED}: {type(model).__name__} cannot write text (not a causal LM); give text files"
        )
    config = GenerationConfig(batch_size=32, max_new_tokens=128, seed=source.seed)
    texts, _ = sample_texts(model, tokenizer, tokens, config, english_starts, progress)
    return "\n".join(" ".join(t.split("\n")) for t in texts) + "\n"  # a text a line: held back at a line end
