"""``--head``: which head an exported decoder runs.

* ``full`` (the default): every token's logit, as transformers computes it; perplexity, sampling, greedy.
* ``shortlist[:k]``: the band's exact logits and the full logits of the ``k`` tail tokens whose coarse logits (the
  tail's low-rank part and exact columns) are highest, every other token ``-inf``
  (:meth:`~hf_factor_embed.export.layers.ExportedLMHead.shortlist_logits`). For greedy decoding (and top-k
  sampling within the list): the codes are read for k tokens, not for all V, so the step is cheaper than a dense
  head's. Its greedy tokens are the full head's where the full head's winner is in the band or the list; the
  export checks that on its prompts, and ``benchmarks/shortlist.py`` measures it on text and languages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FactorEmbedError

HEADS = ("full", "shortlist")
#: Tail tokens whose codes the shortlist head reads by default. On Gemma-3's 242k-token tail (the main job's
#: checkpoint) the full head's winner was in the band or the 16,384 best by the coarse logits at 99.2-100% of
#: teacher-forced positions of served English and five languages not served; at 4,096, 93.8-100%
#: (``python benchmarks/shortlist.py``).
SHORTLIST = 16384


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
