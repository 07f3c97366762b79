"""Degeneration checks of greedy continuations: where a loop starts, and whether dense loops from the same text."""

from __future__ import annotations

import torch

from hf_factor_embed.measure.continuations import compare, loop_start, mark_dense_loops, repeats, summarize


class _Tokenizer:
    """Token ids are the prompt's characters' codes; decoding joins the ids as text."""

    pad_token_id, eos_token_id = 0, 0

    def __call__(self, prompt: str, return_tensors: str = "pt"):
        return type("Encoded", (), {"input_ids": torch.tensor([[ord(c) for c in prompt]])})

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


class _Dense:
    """A 'model' whose greedy continuation loops on 7 when the last token it was fed is 1, else counts up."""

    def __init__(self) -> None:
        self.fed: list[list[int]] = []

    def generate(self, ids, max_new_tokens, **kwargs):
        self.fed.append(ids[0].tolist())
        last = int(ids[0, -1])
        new = [7] * max_new_tokens if last == 1 else list(range(100, 100 + max_new_tokens))
        return torch.cat([ids, torch.tensor([new])], dim=1)


def test_loop_start_finds_the_first_repetition_of_either_kind():
    assert loop_start([1, 2, 3, 3, 3, 3]) == 2
    assert loop_start([9, 1, 2, 1, 2, 1, 2]) == 1
    assert loop_start([5, 1, 2, 3, 4, 6]) is None
    assert repeats([4, 4, 4, 4]) and not repeats([4, 4, 4, 5])


def test_dense_is_fed_the_same_text_up_to_the_loop_and_judged_on_its_own_continuation():
    tokenizer, dense = _Tokenizer(), _Dense()
    prompts = {"ab": "kind", "cd": "kind", "ef": "kind"}
    dense_tokens = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]
    # first: loops on 7 after 1 (so does dense, fed the 1); second: loops on 8 after 1, 2 (dense, fed them, does not)
    ours = [[1, 7, 7, 7, 7, 7], [1, 2, 8, 8, 8, 8], [1, 2, 3, 4, 5, 9]]
    rows = compare(tokenizer, prompts, dense_tokens, ours)
    mark_dense_loops(rows, dense, tokenizer, ours)
    assert [r.repeats for r in rows] == [True, True, False]
    assert [r.dense_loops_too for r in rows] == [True, False, None]
    assert dense.fed == [[ord("a"), ord("b"), 1], [ord("c"), ord("d"), 1, 2]]  # prompt, then ours up to the loop
    assert summarize(rows)["kind"] == {
        "prompts": 3, "identical": 0.0, "common_prefix": 8 / 3, "degenerate": 2, "dense_loops_too": 1,
    }  # fmt: skip


def test_compress_loads_dense_again_only_to_check_a_loop(monkeypatch):
    """compress's report: dense's embedding is gone when ours is decoded, so a loop's check loads dense again, and
    only when a continuation repeats; the printed summary says which loops dense makes too."""
    import hf_factor_embed.measure.continuations as continuations
    from hf_factor_embed.pipeline.summary import summary_table

    tokenizer, dense, loads = _Tokenizer(), _Dense(), []

    def load_dense():
        loads.append(1)
        return dense

    prompts, dense_tokens = {"ab": "docs", "cd": "licenses"}, [[1, 2, 3, 4, 5, 6]] * 2
    monkeypatch.setattr(continuations, "greedy_of_prompts", lambda model, tok, p: [[1, 2, 3, 4, 5, 6]] * 2)
    rows = continuations.beside_dense(None, tokenizer, prompts, dense_tokens, load_dense)
    assert loads == [] and [r["dense_loops_too"] for r in rows] == [None, None]

    ours = [[1, 2, 3, 4, 5, 6], [1, 7, 7, 7, 7, 7]]  # the second loops on 7 after 1, as dense does fed the 1
    monkeypatch.setattr(continuations, "greedy_of_prompts", lambda model, tok, p: ours)
    rows = continuations.beside_dense(None, tokenizer, prompts, dense_tokens, load_dense)
    assert loads == [1] and [r["dense_loops_too"] for r in rows] == [None, True]
    report = {"model_params_before": 10, "model_params_after": 5, "method": "banded"}
    result = {"report": report, "embedding_bytes": {"dense_fp32": 8, "stored": 2, "share": 0.25}, "evaluation": {}}
    assert "degenerate: licenses (dense loops there too)" in summary_table(result | {"continuations": rows})
