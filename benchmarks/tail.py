"""The tail outside the band: low rank against product codes, beside trimming and int4 at equal bytes.

    python benchmarks/tail.py                       # Gemma-3-270M, English served (~15 min on 2 cores)
    python benchmarks/tail.py --points main pq8-8%  # a subset
    python benchmarks/tail.py --max-bytes 0.08      # variants of the product-coded tail at one budget

English is served (Python's reference and Debian changelogs, statistics of their calibration parts gathered once,
the model reading 2,048 tokens of each, as the main job does); every point is measured on 512 tokens of each text
(``<bos>`` first, as Gemma's tokenizer feeds text): the served sources' held-back fifth, English kinds never
calibrated on (license texts, UI messages) and nine languages not served (gettext messages). Beside each point:
hard vocabulary trimming at the same bytes (vocabtrimmer: the highest-scoring rows and the special tokens kept,
other ids read as ``<unk>``), and int4 g32 of the whole embedding. Writes ``benchmarks/results/tail.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.model_text import bos_prefix, special_token_ids
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.calibration.stats import CalibrationStats
from hf_factor_embed.factorize.banded import BandedMethod
from hf_factor_embed.measure.peers import QuantizedPeer, TrimmedPeer
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.bundled import bundled_model
from hf_factor_embed.quantizer.sizes import embedding_bytes

RESULTS = Path(__file__).parent / "results"
SERVED = ["pydoc", "changelogs"]
UNSEEN = ["licenses", "messages", *(f"lang:{c}" for c in ("de", "fr", "es", "ru", "zh_CN", "ja", "ar", "hi", "ko"))]
#: name -> (rank, band share, tail, tail sub-dimension): rank and share set the band (and a low-rank tail's rank).
POINTS = {
    "main": (160, 0.9, "lowrank", None),  # the main job: 59k band rows, a rank-16 tail (6.3%)
    "pq8-6%": (26, 0.9, "pq", 8),  # ~9.6k band rows, one code byte per 8 values
    "pq8-8%": (81, 0.9, "pq", 8),  # ~30k band rows
    "pq8-10%": (135, 0.9, "pq", 8),  # ~50k band rows
    "pq4-10%": (49, 0.9, "pq", 4),  # ~18k band rows, one code byte per 4 values
}
#: At a byte budget (``--max-bytes``): name -> (values per code byte, tail rank, exact outlier columns); the band
#: gets the rest, sized as the plan sizes it (:func:`hf_factor_embed.pipeline.plan.planned_bytes`).
VARIANTS = {
    "pq8": (8, 16, 16),  # the plan's pq8 candidate
    "pq8 c8": (8, 16, 8),  # half the exact columns
    "pq8 r4": (8, 4, 16),  # a rank-4 basis under the codes
    "pq8 c8 r4": (8, 4, 8),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", nargs="*", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--max-bytes", type=float, help="instead of --points: VARIANTS at this share of fp32")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--model-tokens", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS / "tail.json")
    args = parser.parse_args(argv)

    folder = bundled_model("gemma3")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bos = bos_prefix(tokenizer)
    v, d = dense.get_input_embeddings().weight.shape
    fp32 = v * d * 4

    def ids_of(text: str) -> torch.Tensor:
        ids = tokenizer(text[: 16 * args.eval_tokens], add_special_tokens=False, return_tensors="pt").input_ids[0]
        return ids[: args.eval_tokens]

    sources = {name: load_source(name) for name in SERVED}
    evals = {name: ids_of(s.split(0.2)[1]) for name, s in sources.items()}
    evals |= {name: ids_of(load_source(name).text) for name in UNSEEN}

    def score(model, **kwargs) -> dict[str, float]:
        return {k: perplexity(model, ids, window=len(ids) + 1, bos_id=bos, **kwargs) for k, ids in evals.items()}

    dense_ppl = score(dense)
    parts = []
    for source in sources.values():
        ids = tokenizer(source.split(0.2)[0], add_special_tokens=False, return_tensors="pt").input_ids[0]
        parts.append(collect_stats(dense, ids, model_tokens=args.model_tokens, progress=False, bos_id=bos))
    stats = CalibrationStats.combine(*parts, equal=True)
    int4 = QuantizedPeer("int4 g32", 4, 32)
    result = {
        "command": "python benchmarks/tail.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "fp32_bytes": fp32,
        "dense_perplexity": dense_ppl,
        "points": {},
    }
    result["int4 g32"] = {
        "share": int4.stored_bytes(v, d) / fp32,
        "ratio": {k: int4.perplexity(dense, ids, len(ids) + 1, bos_id=bos) / dense_ppl[k] for k, ids in evals.items()},
    }
    print(render_row("int4 g32", result["int4 g32"]), flush=True)
    for name, rank, method in points(args, v, d, special_token_ids(dense, tokenizer).numel()):
        started = time.perf_counter()
        share, tail, sub_dim = method.band_share, method.tail, method.tail_sub_dim
        model = hfe.patch_model(
            copy.deepcopy(dense), rank=rank, method=method, calibration=stats, tokenizer=tokenizer, bits=4
        )
        seconds = time.perf_counter() - started
        stored = embedding_bytes(model)["stored"]
        band = model.get_input_embeddings().dense_index.numel()
        point = {"rank": rank, "band_share": share, "tail": tail, "tail_sub_dim": sub_dim, "band_rows": band}
        point |= {"tail_rank": method.tail_rank, "tail_exact_columns": method.tail_exact_columns}
        point |= {"bytes": stored, "share": stored / fp32, "patch_seconds": round(seconds, 1)}
        point["ratio"] = {k: p / dense_ppl[k] for k, p in score(model).items()}
        del model
        rows = min(v, stored // (d + 2))  # int8 rows with an fp16 scale, as the band is stored
        trim = TrimmedPeer.ranked(stats, special_token_ids(dense, tokenizer), rows, tokenizer.unk_token_id)
        point["trim_equal_bytes"] = {
            "rows": int(rows),
            "ratio": {
                k: trim.perplexity(dense, ids, len(ids) + 1, bos_id=bos) / dense_ppl[k] for k, ids in evals.items()
            },
        }
        result["points"][name] = point
        print(render_row(name, point), flush=True)
        print(render_row(f"  trim {rows} rows", {"share": point["share"], **point["trim_equal_bytes"]}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def points(args, v: int, d: int, special_rows: int):
    """(name, rank, method) of each point: ``--points``, or ``--variants`` sized to ``--max-bytes``."""
    if args.max_bytes is None:
        for name in args.points:
            rank, share, tail, sub_dim = POINTS[name]
            yield name, rank, BandedMethod(share, tail=tail, tail_sub_dim=sub_dim or 8)
        return
    from hf_factor_embed.pipeline.budget import BAND_SHARE, candidates

    budget = int(args.max_bytes * v * d * 4)
    for name in args.variants:
        sub_dim, tail_rank, columns = VARIANTS[name]
        sizes = dict(bits=4, special_rows=special_rows, tail_rank=tail_rank, exact_columns=columns)
        (candidate,) = candidates(v, d, budget, formats=(f"pq{sub_dim}",), **sizes)
        rank = candidate.rank
        method = BandedMethod(
            BAND_SHARE, tail="pq", tail_sub_dim=sub_dim, tail_rank=tail_rank, tail_exact_columns=columns
        )
        yield name, rank, method


def render_row(name: str, point: dict) -> str:
    cells = "".join(f" {k.removeprefix('lang:')}={_fmt(r)}" for k, r in point["ratio"].items())
    return f"{name:<18} {point['share']:.1%}{cells}"


def _fmt(ratio: float) -> str:
    return f"{ratio:.3f}" if ratio < 100 else f"{ratio:.2g}"


if __name__ == "__main__":
    main()
