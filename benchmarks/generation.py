"""Greedy continuations, compressed vs dense: what a user sees, beyond perplexity.

    python benchmarks/generation.py --checkpoint out/gemma3-en            # the main job's checkpoint (~8 min)
    python benchmarks/generation.py --model smollm2 --checkpoint out/smollm2-r256 --new-tokens 16
    python benchmarks/generation.py --checkpoint out/gemma3-en --shortlist 8192   # the shortlist head too

Prompts (written for this benchmark, never used to calibrate or tune anything): English of several kinds, English
with rare tokens (names with diacritics, emoji, symbols, code), and one prompt in each of eleven other languages.
Each is fed as the tokenizer feeds it (``<bos>`` first for Gemma) and continued greedily for ``--new-tokens``
tokens by the dense model and by each checkpoint. Reported per group: the share of continuations identical to
dense's, the mean common prefix in tokens, and degenerate continuations (:mod:`hf_factor_embed.measure.continuations`:
a token or short sequence repeated, or another script, where dense's is not). Writes
``benchmarks/results/generation.json`` with every continuation. ``--shortlist K`` decodes each checkpoint again with
its head's shortlist (``FactorizedLMHead.use_shortlist``: the codes of K tail tokens a step) and reports its
seconds and the continuations identical to the full head's.

Beside them, in the same run: the dense embedding quantized as a user would instead (``--peers``, default int8 per
row, int6 g16 and int4 g32: :mod:`hf_factor_embed.measure.peers`), judged the same way; greedy agreement is only
meaningful beside them. For every continuation that loops, dense is fed the same text up to where the loop starts
(:func:`~hf_factor_embed.measure.continuations.dense_loops_too`): a loop dense enters from there too is the base
model's own, reached through a near-tie; both counts are reported. And ``from_pretrained`` seconds, best of 3, of
dense's folder and of each checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed  # noqa: F401  (registers the integration: factorized checkpoints load)
from hf_factor_embed.measure.continuations import compare, greedy, mark_dense_loops, summarize
from hf_factor_embed.measure.peers import quantization_peers
from hf_factor_embed.models.bundled import bundled_model

RESULTS = Path(__file__).parent / "results"

PROMPTS = {
    "english": [
        "The capital of Australia is",
        "Photosynthesis is the process by which plants",
        "To make a good cup of tea, you should first",
        "The main causes of the First World War were",
        "In mathematics, a prime number is",
        "My favourite thing about autumn is",
        "Dear Sir or Madam, I am writing to complain about",
        "The recipe calls for two cups of flour and",
        "Once upon a time, in a small village by the sea,",
        "The stock market fell sharply on Monday after",
        "A good night's sleep helps the brain",
        "The difference between a virus and a bacterium is",
    ],
    "english, rare tokens": [
        "My friend Nguyễn Thị Minh loves 🍜 and ☕, so for her birthday I will cook",
        "Søren Kierkegaard and Björk both come from the north; Kierkegaard wrote",
        "The temperature dropped to −40 °C, which is also −40 °F, because",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "I can't believe it 😂😂 the cat just",
        "The formula E = mc² tells us that",
        "Zoë and François met in Zürich at the café",
        "SELECT name, COUNT(*) FROM orders WHERE",
    ],
    "languages not English": [
        "Die Hauptstadt von Deutschland ist",  # de
        "La tour Eiffel a été construite en",  # fr
        "El río más largo de América del Sur es",  # es
        "Машинное обучение — это область искусственного интеллекта, которая",  # ru
        "中国的首都是北京，它是一座",  # zh
        "日本で一番高い山は",  # ja
        "Warszawa jest stolicą Polski i",  # pl
        "O Brasil é o maior país da América do Sul e",  # pt
        "القاهرة هي عاصمة مصر، وهي",  # ar
        "भारत की राजधानी नई दिल्ली है और",  # hi
        "서울은 대한민국의 수도이며",  # ko
    ],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="the dense model: bundled gemma3 or smollm2")
    parser.add_argument("--checkpoint", type=Path, action="append", required=True, help="repeat for several")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "generation.json")
    parser.add_argument("--shortlist", type=int, help="also decode with the head's shortlist of this many tokens")
    parser.add_argument(
        "--peers", default="int8,int6,int4", help=f"comma-separated, of {', '.join(PEERS)}; '' for none"
    )
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.checkpoint if not (c / "config.json").is_file()]
    peers = [p for p in args.peers.split(",") if p]
    if missing or args.new_tokens < 1 or set(peers) - set(PEERS):
        problem = f"no checkpoint at {missing[0]}" if missing else "--new-tokens must be > 0"
        if set(peers) - set(PEERS):
            problem = f"unknown peer {sorted(set(peers) - set(PEERS))[0]!r}: pick from {', '.join(PEERS)}"
        sys.exit(f"generation.py: error: {problem}")

    folder = bundled_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    groups = {p: group for group, prompts in PROMPTS.items() for p in prompts}
    torch.manual_seed(0)
    load_seconds, dense_model = loaded(folder)
    started = time.perf_counter()
    dense = greedy(dense_model, tokenizer, list(groups), args.new_tokens)
    result = {"model": args.model, "new_tokens": args.new_tokens, "dense_seconds": time.perf_counter() - started}
    result["command"] = "python benchmarks/generation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result["load_seconds"] = {"dense": load_seconds}
    judge = functools.partial(judged, groups=groups, dense=dense, dense_model=dense_model, tokenizer=tokenizer)
    result["peers"] = {}
    for name in peers:
        with PEERS[name].applied(dense_model):
            started = time.perf_counter()
            theirs = greedy(dense_model, tokenizer, list(groups), args.new_tokens)
            seconds = time.perf_counter() - started
        result["peers"][PEERS[name].name] = judge(PEERS[name].name, seconds, theirs)
    result["checkpoints"] = {}
    for checkpoint in args.checkpoint:
        result["load_seconds"][str(checkpoint)], model = loaded(checkpoint)
        started = time.perf_counter()
        ours = greedy(model, tokenizer, list(groups), args.new_tokens)
        seconds = time.perf_counter() - started
        result["checkpoints"][str(checkpoint)] = judge(str(checkpoint), seconds, ours)
        if args.shortlist:
            model.get_output_embeddings().use_shortlist(args.shortlist)
            started = time.perf_counter()
            listed = greedy(model, tokenizer, list(groups), args.new_tokens)
            same = sum(a == b for a, b in zip(listed, ours, strict=True))
            seconds = time.perf_counter() - started
            result["checkpoints"][str(checkpoint)]["shortlist"] = {
                "size": args.shortlist, "seconds": seconds, "identical_to_full_head": same, "prompts": len(ours),
            }  # fmt: skip
            print(
                f"shortlist {args.shortlist}: {same} of {len(ours)} continuations the full head's; {seconds:.1f} s "
                f"against the full head's {result['checkpoints'][str(checkpoint)]['seconds']:.1f} s and dense's "
                f"{result['dense_seconds']:.1f} s",
                flush=True,
            )
    print("from_pretrained, best of 3: " + ", ".join(f"{k} {v:.3f} s" for k, v in result["load_seconds"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))


#: ``--peers`` names -> the dense embedding quantized as a user would instead.
PEERS = {p.name.split()[0]: p for p in reversed(quantization_peers())}  # "int8" is per row, not "int8 g64"


def loaded(folder: Path, times: int = 3):
    """(best ``from_pretrained`` seconds of ``times``, the model of the last load, in eval mode)."""
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(folder)
        seconds.append(time.perf_counter() - started)
    return min(seconds), model.eval()


def judged(name: str, seconds: float, ours, *, groups, dense, dense_model, tokenizer) -> dict:
    """Continuations ``ours`` beside ``dense``'s, loops checked against dense from the same text; printed."""
    rows = compare(tokenizer, groups, dense, ours)
    mark_dense_loops(rows, dense_model, tokenizer, ours)
    print(render(name, rows), flush=True)
    return {"seconds": seconds, "summary": summarize(rows), "continuations": [r.as_dict() for r in rows]}


def render(name: str, rows) -> str:
    lines = [
        f"{name}: greedy continuations vs dense",
        f"{'group':<24}{'prompts':>8}{'identical':>11}{'prefix':>8}{'degenerate':>12}{'dense loops too':>17}",
    ]
    for group, s in summarize(rows).items():
        lines.append(
            f"{group:<24}{s['prompts']:>8}{s['identical']:>10.0%}{s['common_prefix']:>8.1f}{s['degenerate']:>12}"
            f"{s.get('dense_loops_too', 0):>17}"
        )
    for r in rows:
        if r.degenerate:
            dense_too = " (dense, fed the same text, loops too)" if r.dense_loops_too else ""
            lines.append(f"  degenerate{dense_too}: {r.prompt!r} -> {r.ours[:80]!r} (dense: {r.dense[:60]!r})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
