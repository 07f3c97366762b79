"""``--head``: which head an exported decoder runs.

* ``full`` (the default): every token's logit, as transformers computes it; perplexity, sampling, greedy.
* ``shortlist[:k]``: the band's exact logits and the full logits of ``k`` tail tokens, every other token ``-inf``
  (:meth:`~hf_factor_embed.export.layers.ExportedLMHead.shortlist_logits`): the ``8 k`` tail tokens of highest
  coarse logit (the tail's low-rank part and exact columns), then the ``k`` best of those once a quarter of their
  codes is added. For greedy decoding (and top-k sampling within the list): the codes are read for a list, not for
  all V, so the step is cheaper than a dense head's. Its greedy tokens are the full head's where the full head's
  winner is in the band or the list; the export checks that on its prompts, and ``benchmarks/shortlist.py`` and
  ``benchmarks/shortlist_twostage.py`` measure it on text, languages and the generation benchmark's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FactorEmbedError

HEADS = ("full", "shortlist")
#: Tail tokens whose codes the shortlist head reads whole by default. On Gemma-3's 242k-token tail (the main job's
#: checkpoint) the two stages from 65,536 listed tokens to 8,192 gave the full head's greedy continuation on all 31
#: prompts of the generation benchmark, where one list of 16,384 by coarse logit gave 29 and needed 65,536
#: (``python benchmarks/shortlist_twostage.py``).
SHORTLIST = 8192


@dataclass(frozen=True)
class HeadChoice:
    """The head an export writes: ``kind`` ("full" or "shortlist") and, for a shortlist, its size."""

    kind: str = "full"
    size: int | None = None

    @property
    def shortlist(self) -> int | None:
        return self.size if self.kind == "shortlist" else None

    def __str__(self) -> str:
        return self.kind if self.size is None else f"{self.kind}:{self.size}"


def parse_head(spec: str | HeadChoice) -> HeadChoice:
    """``full``, ``shortlist`` or ``shortlist:<k>``; anything else is one line naming the forms."""
    if isinstance(spec, HeadChoice):
        return spec
    kind, _, size = str(spec).partition(":")
    if kind == "full" and not size:
        return HeadChoice()
    if kind == "shortlist" and (not size or (size.isdigit() and int(size) >= 1)):
        return HeadChoice("shortlist", int(size) if size else SHORTLIST)
    raise FactorEmbedError(
        f"--head {spec!r} is not one of: full, shortlist, shortlist:<tokens> (a whole number of tail tokens whose "
        f"codes are read each step, e.g. shortlist:{SHORTLIST})"
    )
