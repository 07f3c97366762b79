"""Which shortlist gives the full head's greedy continuation on every prompt of the generation benchmark?

    python benchmarks/shortlist_twostage.py --checkpoint out/gemma3-en        # ~12 min on this CPU

Which lists the shortlist head (``export --head shortlist:K``, ``use_shortlist(K)``) reads. One stage: the K tail
tokens of highest coarse logit, all m code bytes of each (the head before 2026-12-06). Two stages (the head now,
``layers.factorized.shortlist_tail_logits`` at K2 = 8,192): the K1 best by coarse logit, then the first m1 of the m
subspaces for each of them, then all of the subspaces for the K2 best by that partial logit. Either head is exact
on the band and on its list; the candidates here are computed apart from the library's function.

For each of the generation benchmark's 31 prompts (fed as the tokenizer feeds them, ``<bos>`` first), the
checkpoint's full head decodes 32 greedy tokens. The continuation is then fed back in one pass, and at each step
every candidate head reads the same final hidden state. A prompt counts for a head when its top token is the full
head's at all 32 steps: it would have decoded the same continuation. The full head itself, re-read from the one
pass, is the first row, as a floor for near-ties between the two passes. Writes
``benchmarks/results/shortlist_twostage_<checkpoint name>.json``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_factor_embed.measure.continuations import greedy

sys.path.insert(0, str(Path(__file__).parent))
from generation import PROMPTS  # noqa: E402
from shortlist import checkpoint_and_head, head_input_and_logits  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 32
ONE_STAGE = (16384, 32768, 65536)
#: (K1 listed by coarse logit, m1 subspaces read for them, K2 read whole)
TWO_STAGE = (
    (65536, 32, 8192),
    (65536, 32, 4096),
    (65536, 16, 8192),
    (65536, 16, 4096),
    (32768, 32, 4096),
    (65536, 8, 8192),
    (131072, 16, 8192),
)


def main(argv: list[str] | None = None) -> dict:
    args, model, tokenizer, head = checkpoint_and_head(__doc__, argv)
    prompts = [p for group in PROMPTS.values() for p in group]
    continuations = greedy(model.eval(), tokenizer, prompts, NEW_TOKENS)
    command = "python benchmarks/shortlist_twostage.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    identical: dict[str, list[bool]] = {}
    for prompt, continuation in zip(prompts, continuations, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        hidden, logits = head_input_and_logits(model, torch.cat([ids, torch.tensor([continuation[:-1]])], 1))
        target = torch.tensor(continuation)
        start = ids.shape[1] - 1
        picks = {"full head (one pass)": logits[0, start:].argmax(-1)} | _picks(head, hidden[0, start:].float())
        for name, pick in picks.items():
            identical.setdefault(name, []).append(bool(torch.equal(pick, target)))
        print(prompt[:40], {name: sum(v) for name, v in identical.items()}, flush=True)
    result = {"command": command, "prompts": len(prompts), "new_tokens": NEW_TOKENS}
    result["identical"] = {name: sum(v) for name, v in identical.items()}
    result["missed"] = {name: [p for p, ok in zip(prompts, v, strict=True) if not ok] for name, v in identical.items()}
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"shortlist_twostage_{args.checkpoint.name}.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


@torch.no_grad()
def _picks(head, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each candidate head's top token at each position of ``hidden`` (n, d)."""
    m, k, s = head.codebooks.shape
    coarse = F.linear(F.linear(hidden, head.basis), head.weight)
    coarse += F.linear(hidden.index_select(-1, head.tail_columns), head.tail_column_values.float())
    tables = torch.einsum("nms,mks->nkm", F.linear(hidden, head.tail_rotation).view(-1, m, s), head.codebooks)
    band_logits = F.linear(hidden, head.dense_rows)
    candidates = coarse.index_fill(-1, head.dense_index, float("-inf"))

    def code_sum(listed: torch.Tensor, subspaces: slice) -> torch.Tensor:
        return tables[..., subspaces].gather(1, head.tail_codes[listed].long()[..., subspaces]).sum(-1)

    def top(listed: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        full = torch.full_like(coarse, float("-inf")).scatter(-1, listed, logits)
        return full.index_copy(-1, head.dense_index, band_logits).argmax(-1)

    picks = {}
    for size in ONE_STAGE:
        listed = candidates.topk(size, -1).indices
        picks[f"one stage, K = {size}"] = top(listed, coarse.gather(-1, listed) + code_sum(listed, slice(None)))
    for first, subspaces, second in TWO_STAGE:
        listed = candidates.topk(first, -1).indices
        partial = coarse.gather(-1, listed) + code_sum(listed, slice(0, subspaces))
        kept = partial.topk(second, -1).indices
        listed = listed.gather(-1, kept)
        logits = partial.gather(-1, kept) + code_sum(listed, slice(subspaces, None))
        picks[f"two stages, {first} -> {subspaces} of {m} subspaces -> {second}"] = top(listed, logits)
    return picks


def render(name: str, result: dict) -> str:
    lines = [f"{name}: continuations identical to the full head's, of {result['prompts']} prompts x 32 tokens"]
    for label, same in result["identical"].items():
        missed = "; ".join(p[:32] for p in result["missed"][label])
        lines.append(f"{label:<52}{same:>4}" + (f"   missed: {missed}" if missed else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
