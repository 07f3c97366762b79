"""A bound on the tail's logits, measured: does pessimism about the rows outside the band help?

    python benchmarks/logit_bound.py --checkpoint out/gemma3-plan08 --kappa 0 1 2 4 8   (~6 min on 2 cores)
    python benchmarks/logit_bound.py --checkpoint out/gemma3-en --kappa 0 1 2 --generation --out \
        benchmarks/results/logit_bound_pq8.json

The rows outside the band are approximations; where a tail token's logit is wrong upward it can win the argmax
(the low-rank tail's "meshgridmeshgrid..."). A lower confidence bound on each tail logit subtracts
``kappa * e_t * ||h||`` with ``e_t = sqrt(d_t' S d_t / tr S)``: ``d_t`` the row's error against the dense row,
``S`` the second moment of the head's inputs on the served calibration text (Python's reference and Debian
changelogs, the first 1,023 tokens of each calibration part), so ``e_t * ||h||`` is the row's RMS logit error
scaled to the hidden state at hand. Applied by a hook on the checkpoint's head; perplexity ratios to dense on
512 tokens of each text, ``<bos>`` first (served: the held-back fifths; the rest never calibrated on). Writes
``benchmarks/results/logit_bound.json``. Gemma-3-270M.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed  # noqa: F401  (registers the integration: factorized checkpoints load)
from hf_factor_embed.calibration.model_text import bos_prefix
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.measure.continuations import compare, greedy, summarize
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.bundled import bundled_model

sys.path.insert(0, str(Path(__file__).parent))
from generation import PROMPTS  # noqa: E402  (the generation benchmark's prompts)

RESULTS = Path(__file__).parent / "results"
SERVED = ("pydoc", "changelogs")
UNSEEN = ("licenses", "lang:de", "lang:ru", "lang:hi", "lang:zh_CN", "lang:ar")


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--kappa", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--out", type=Path, default=RESULTS / "logit_bound.json")
    parser.add_argument(
        "--generation", action="store_true", help="also greedy continuations of generation.py's prompts"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    folder = bundled_model("gemma3")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    bos = bos_prefix(tokenizer)
    head = ours.get_output_embeddings()
    error = row_errors(dense, tokenizer, head, bos)
    texts = {name: load_source(name).split(0.2)[1] for name in SERVED}
    texts |= {name: load_source(name).text for name in UNSEEN}
    ids = {
        n: tokenizer(t[:8192], add_special_tokens=False, return_tensors="pt").input_ids[0][:512]
        for n, t in texts.items()
    }
    dense_ppl = {n: perplexity(dense, i, window=513, bos_id=bos) for n, i in ids.items()}
    kappa = [0.0]
    head.register_forward_hook(lambda m, i, o: o - kappa[0] * error * i[0].norm(dim=-1, keepdim=True))
    result = {"command": "python benchmarks/logit_bound.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    result["row_error_quantiles"] = error.quantile(torch.tensor([0.5, 0.9, 0.99])).tolist()
    result["ratio"], result["generation"] = {}, {}
    groups = {p: group for group, prompts in PROMPTS.items() for p in prompts}
    dense_tokens = greedy(dense, tokenizer, list(groups), args.new_tokens) if args.generation else None
    for k in args.kappa:
        kappa[0] = k
        ratio = {n: perplexity(ours, i, window=513, bos_id=bos) / dense_ppl[n] for n, i in ids.items()}
        result["ratio"][str(k)] = ratio
        print(f"kappa={k:g}: " + " ".join(f"{n}={r:.3g}" for n, r in ratio.items()), flush=True)
        if dense_tokens is not None:
            rows = compare(tokenizer, groups, dense_tokens, greedy(ours, tokenizer, list(groups), args.new_tokens))
            result["generation"][str(k)] = summarize(rows)
            for group, g in summarize(rows).items():
                print(
                    f"  {group}: identical {g['identical']:.0%}, prefix {g['common_prefix']:.1f}, "
                    f"degenerate {g['degenerate']}",
                    flush=True,
                )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def row_errors(dense, tokenizer, head, bos: int | None) -> torch.Tensor:
    """Per token: the RMS logit error of its row over the calibration hidden states, per unit of ||h||."""
    captured = []
    hook = dense.get_output_embeddings().register_forward_hook(lambda m, i, o: captured.append(i[0].flatten(0, -2)))
    for name in SERVED:
        text = load_source(name).split(0.2)[0][:40000]
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0][:1023]
        dense(torch.cat([torch.tensor([bos] if bos is not None else []).long(), ids])[None])
    hook.remove()
    states = torch.cat(captured).double()
    moment = states.T @ states / states.shape[0]
    delta = (dense.get_input_embeddings().weight - head.dense_weight()).double()
    return ((delta @ moment) * delta).sum(1).div(moment.trace()).sqrt().float()


if __name__ == "__main__":
    main()
