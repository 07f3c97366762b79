"""What a user sees: greedy continuations of a compressed model beside the dense model's, and degeneration.

Perplexity averages over positions; a user reads one continuation at a time, and a tail token that wins the argmax
once can repeat for the rest of the answer ("meshgridmeshgrid..."). Every prompt is fed as the tokenizer feeds it
(``<bos>`` first where it adds one). A continuation is *degenerate* where the dense model's is not, when

* it repeats: one token four times running, or a 2- to 4-token sequence three times running;
* it changes script: most of its letters are of another script than the prompt's (Latin, Cyrillic, CJK, ...),
  while most of dense's are of the prompt's.

A loop can be the dense model's own, reached through a near-tie: a base model that reads "... in the city" may
answer ``<start_of_image>`` and repeat it. :func:`dense_loops_too` feeds dense the same text up to where the loop
starts and says whether dense loops there as well; a report gives both counts, never the second alone.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

#: Unicode script names that read as one script here (Japanese mixes kanji and kana).
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "FULLWIDTH": "CJK", "HALFWIDTH": "CJK"}


@dataclass
class Continuation:
    """One prompt's greedy continuation beside dense's."""

    prompt: str
    group: str
    dense: str
    ours: str
    identical: bool  # the same tokens over the whole continuation
    common_prefix: int  # tokens equal from the start
    repeats: bool  # degenerate by repetition where dense does not repeat
    other_script: bool  # degenerate by script where dense keeps the prompt's
    dense_loops_too: bool | None = None  # dense, fed this text up to the loop, loops too (None: not asked)

    @property
    def degenerate(self) -> bool:
        return self.repeats or self.other_script

    def as_dict(self) -> dict:
        return {**asdict(self), "degenerate": self.degenerate}


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], new_tokens: int = 32) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids), the prompt fed as the tokenizer feeds it, one at a time (no
    padding, so no position or mask differs from a single user's request)."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        out.append(generated[0, ids.shape[1] :].tolist())
    return out


def compare(tokenizer, groups: dict[str, str], dense: list[list[int]], ours: list[list[int]]) -> list[Continuation]:
    """``groups``: prompt -> its group (English kind, a language); ``dense``/``ours``: their continuations."""
    rows = []
    for (prompt, group), d, o in zip(groups.items(), dense, ours, strict=True):
        prefix = common_prefix(d, o)
        d_text, o_text = tokenizer.decode(d), tokenizer.decode(o)
        script = dominant_script(prompt)
        rows.append(
            Continuation(
                prompt=prompt,
                group=group,
                dense=d_text,
                ours=o_text,
                identical=d == o,
                common_prefix=prefix,
                repeats=repeats(o) and not repeats(d),
                other_script=script is not None
                and dominant_script(o_text) not in (None, script)
                and dominant_script(d_text) in (None, script),
            )
        )
    return rows


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share before they part."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def repeats(tokens: list[int]) -> bool:
    """One token four times running, or a sequence of 2 to 4 tokens three times running."""
    return loop_start(tokens) is not None


def loop_start(tokens: list[int]) -> int | None:
    """Where the first repetition that :func:`repeats` finds begins (None: there is none)."""
    starts = []
    for n, times in ((1, 4), (2, 3), (3, 3), (4, 3)):
        for start in range(len(tokens) - n * times + 1):
            unit = tokens[start : start + n]
            if all(tokens[start + k * n : start + (k + 1) * n] == unit for k in range(1, times)):
                starts.append(start)
                break
    return min(starts, default=None)


@torch.no_grad()
def dense_loops_too(dense_model, tokenizer, prompt: str, ours: list[int]) -> bool:
    """Whether ``dense_model``, fed ``prompt`` and ``ours`` up to where its loop starts, repeats in its own greedy
    continuation of the same length (the loop is then the dense model's, reached through a near-tie)."""
    start = loop_start(ours)
    if start is None:
        return False
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    fed = torch.cat([ids, torch.tensor([ours[:start]], dtype=ids.dtype)], dim=1)
    generated = dense_model.generate(
        fed,
        attention_mask=torch.ones_like(fed),
        max_new_tokens=len(ours) - start,
        min_new_tokens=len(ours) - start,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return repeats(generated[0, fed.shape[1] :].tolist())


def mark_dense_loops(rows: list[Continuation], dense_model, tokenizer, ours: list[list[int]]) -> None:
    """Set :attr:`Continuation.dense_loops_too` on each row that repeats (``ours``: the rows' token ids)."""
    for row, tokens in zip(rows, ours, strict=True):
        if row.repeats:
            row.dense_loops_too = dense_loops_too(dense_model, tokenizer, row.prompt, tokens)


def dominant_script(text: str) -> str | None:
    """The script most of ``text``'s letters are written in (None for no letters)."""
    scripts = Counter(_script(ch) for ch in text if ch.isalpha())
    return scripts.most_common(1)[0][0] if scripts else None


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "UNKNOWN").split()[0]
    return _SAME_SCRIPT.get(name, name)


def summarize(rows: list[Continuation]) -> dict[str, dict]:
    """Per group: prompts, share identical, mean common prefix, degenerate prompts."""
    out = {}
    for group in dict.fromkeys(r.group for r in rows):
        mine = [r for r in rows if r.group == group]
        out[group] = {
            "prompts": len(mine),
            "identical": sum(r.identical for r in mine) / len(mine),
            "common_prefix": sum(r.common_prefix for r in mine) / len(mine),
            "degenerate": sum(r.degenerate for r in mine),
        }
        if any(r.dense_loops_too is not None for r in mine):  # asked: how many loops dense enters from there too
            out[group]["dense_loops_too"] = sum(bool(r.dense_loops_too) for r in mine)
    return out


#: Greedy continuations shown beside dense's in the report and the card: one prompt per measured text (its first
#: PROMPT_TOKENS tokens, held back or never calibrated on), NEW_TOKENS tokens each.
PROMPT_TOKENS, NEW_TOKENS = 12, 16


def text_prompts(eval_ids: dict, tokenizer) -> dict[str, str]:
    """Prompt -> the measured text it comes from: the first words of its first line of prose (30 characters or
    more, mostly letters; catalogs open with date formats), else of the text."""
    out = {}
    for name, ids in eval_ids.items():
        lines = tokenizer.decode(ids[:400], skip_special_tokens=True).splitlines()
        prose = next((line.strip() for line in lines if _is_prose(line)), None)
        opening = tokenizer(prose, add_special_tokens=False).input_ids if prose else ids
        prompt = tokenizer.decode(opening[:PROMPT_TOKENS], skip_special_tokens=True).strip()
        if prompt and prompt not in out:
            out[prompt] = name
    return out


def _is_prose(line: str) -> bool:
    text = line.strip()
    return len(text) >= 30 and sum(c.isalpha() or c.isspace() for c in text) >= 0.8 * len(text)


def greedy_of_prompts(model, tokenizer, prompts: dict[str, str]) -> list[list[int]]:
    """:func:`greedy` continuations of :func:`text_prompts`' prompts, NEW_TOKENS each (none without prompts)."""
    return greedy(model, tokenizer, list(prompts), NEW_TOKENS) if prompts else []


def beside_dense(
    model, tokenizer, prompts: dict[str, str], dense: list[list[int]], load_dense: Callable[[], object] | None = None
) -> list[dict]:
    """What a user reads: each prompt's greedy continuation by the compressed model beside dense's.

    ``load_dense`` gives the dense model again; it is called only when a continuation repeats, to ask whether dense
    loops there too (:func:`mark_dense_loops`): by then the compressed model has replaced dense's embedding."""
    ours = greedy_of_prompts(model, tokenizer, prompts)
    rows = compare(tokenizer, prompts, dense, ours)
    if load_dense is not None and any(row.repeats for row in rows):
        mark_dense_loops(rows, load_dense(), tokenizer, ours)
    return [row.as_dict() for row in rows]
