"""What ``<bos>`` does to a perplexity figure: each text measured with the tokenizer's ``<bos>`` first in every
window (as the model runs) and without it (as the product measured before), dense and factorized.

    python benchmarks/bos.py                                    # dense Gemma-3-270M (~2 min on 2 cores)
    python benchmarks/bos.py --checkpoint out/gemma3-en         # beside the main job's checkpoint

Text: the held-back fifth of Python's reference (pydoc_data) and of Debian changelogs, license texts and the
gettext messages' English originals, German gettext messages (:mod:`hf_factor_embed.calibration.sources`); the first
``--eval-tokens`` tokens of each, in 512-position windows. Writes ``benchmarks/results/bos.json``.
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
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.bundled import bundled_model

RESULTS = Path(__file__).parent / "results"
TEXTS = {"pydoc": True, "changelogs": True, "licenses": False, "messages": False, "lang:de": False}  # held back?


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="a bundled model: gemma3 or smollm2")
    parser.add_argument("--checkpoint", type=Path, help="a factorized checkpoint of the same model")
    parser.add_argument("--eval-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=RESULTS / "bos.json")
    args = parser.parse_args(argv)

    folder = bundled_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos = bos_prefix(tokenizer)
    if bos is None:
        sys.exit(f"bos.py: error: the {args.model} tokenizer puts no <bos> before text; nothing to compare")
    models = {"dense": AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()}
    if args.checkpoint:
        models[args.checkpoint.name] = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    rows = {}
    for name, held_back in TEXTS.items():
        source = load_source(name)
        text = source.split(0.2)[1] if held_back else source.text
        ids = tokenizer(text[: 16 * args.eval_tokens], add_special_tokens=False, return_tensors="pt").input_ids[0]
        ids = ids[: args.eval_tokens]
        rows[name] = {
            model_name: {
                "with_bos": perplexity(model, ids, window=512, bos_id=bos),
                "without_bos": perplexity(model, ids, window=512),
            }
            for model_name, model in models.items()
        }
        print(name, json.dumps(rows[name]), flush=True)
    print(render(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bos.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps({"command": command, "model": args.model, "bos_id": bos, "rows": rows}, indent=1))


def render(rows: dict) -> str:
    models = list(next(iter(rows.values())))
    header = f"{'text':<12}" + "".join(f"{m + ' with <bos>':>26}{m + ' without':>24}" for m in models)
    lines = [header]
    for name, by_model in rows.items():
        lines.append(
            f"{name:<12}" + "".join(f"{r['with_bos']:>26.3f}{r['without_bos']:>24.3f}" for r in by_model.values())
        )
    if len(models) > 1:
        lines.append("ratio to dense, with <bos> / without:")
        for name, by_model in rows.items():
            d, f = by_model["dense"], by_model[models[1]]
            lines.append(
                f"  {name:<12}{f['with_bos'] / d['with_bos']:.3f}x / {f['without_bos'] / d['without_bos']:.3f}x"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
