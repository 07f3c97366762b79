"""Where a transformers decode step's time goes, the body (the transformer layers) against the head, for dense and
for the factorized checkpoint's heads: and so the most any head could speed decoding up.

    python benchmarks/decode_split.py --checkpoint out/gemma3-en --dense bundled:gemma3    # ~3 min on this CPU

A prompt of pydoc text (``pydoc_data.topics``, ``<bos>`` first where the tokenizer adds it), then ``--steps``
decode steps through the cache, each fed dense's greedy token (the same tokens for every model, so every model
does the same work). A step is timed in two parts: ``model.model(...)`` (embedding and layers), then the head on
the last hidden state. Rounds alternate between the models (dense, ours, ours with the shortlist head, again) so
the machine's drift falls on all; medians over rounds and steps. The bound ``(body + dense head) / body`` is
dense's decode time over that of a head that costs nothing. Writes
``benchmarks/results/decode_split_<checkpoint name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_factor_embed.export.head import SHORTLIST
from hf_factor_embed.models.bundled import resolve

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", required=True, help="the dense model it came from (a folder or bundled:NAME)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shortlist", type=int, default=SHORTLIST, help="tail tokens the shortlist head reads whole")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        sys.exit(f"decode_split.py: error: no checkpoint at {args.checkpoint}")
    if min(args.prompt_tokens, args.steps, args.rounds) < 1:
        sys.exit("decode_split.py: error: --prompt-tokens, --steps and --rounds must be > 0")
    dense_folder = resolve(args.dense)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_pretrained(dense_folder).eval()
    ours = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(dense_folder)
    prompt = _prompt(tokenizer, args.prompt_tokens)
    fed = _greedy_tokens(dense, prompt, args.steps)
    models = {"dense": (dense, None), "ours, full head": (ours, None), "ours, shortlist head": (ours, args.shortlist)}
    times = {name: {"body": [], "head": []} for name in models}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, (model, shortlist) in models.items():
                if model is ours:
                    ours.get_output_embeddings().use_shortlist(shortlist)
                body, head = _timed_steps(model, prompt, fed)
                times[name]["body"] += body
                times[name]["head"] += head
    ours.get_output_embeddings().use_shortlist(None)
    command = "python benchmarks/decode_split.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "steps": args.steps, "rounds": args.rounds, "models": {}}
    for name, parts in times.items():
        body, head = (statistics.median(parts[p]) * 1e3 for p in ("body", "head"))
        result["models"][name] = {"body_ms": body, "head_ms": head, "step_ms": body + head}
    dense_row = result["models"]["dense"]
    result["bound_x_dense"] = dense_row["step_ms"] / dense_row["body_ms"]
    for row in result["models"].values():
        row["x_dense"] = dense_row["step_ms"] / row["step_ms"]
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"decode_split_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _prompt(tokenizer, tokens: int) -> torch.Tensor:
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)[:20])
    return tokenizer(text, return_tensors="pt").input_ids[:, :tokens]  # the tokenizer's <bos> first


def _greedy_tokens(model, prompt: torch.Tensor, steps: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    return out[0, prompt.shape[1] :].tolist()


def _timed_steps(model, prompt: torch.Tensor, fed: list[int]) -> tuple[list[float], list[float]]:
    """Seconds of each decode step's body and head, the prompt prefilled first (not timed)."""
    out = model.model(input_ids=prompt, use_cache=True)
    cache, body, head = out.past_key_values, [], []
    for token in fed:
        started = time.perf_counter()
        out = model.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1:]
        middle = time.perf_counter()
        model.get_output_embeddings()(hidden)
        ended = time.perf_counter()
        cache = out.past_key_values
        body.append(middle - started)
        head.append(ended - middle)
    return body, head


def render(name: str, result: dict) -> str:
    lines = [
        f"{name}: a transformers decode step, body and head (ms, medians), this CPU",
        f"{'model':<24}{'body':>8}{'head':>8}{'step':>8}{'x dense':>9}",
    ]
    for label, row in result["models"].items():
        lines.append(
            f"{label:<24}{row['body_ms']:>8.1f}{row['head_ms']:>8.1f}{row['step_ms']:>8.1f}{row['x_dense']:>8.2f}x"
        )
    lines.append(f"a head that costs nothing: {result['bound_x_dense']:.2f}x dense")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
