"""Codebook structures for the product-coded tail, at equal bytes a row: plain product quantization (the product's),
a second product stage on the residual, product-residual quantization (group residual VQ, as CARVQ), a per-row
fp16 scale, and (``--opq``) an optimized rotation.

    python benchmarks/codebooks.py            # ~25 min on 2 cores (product-residual is faiss's slowest)
    python benchmarks/codebooks.py --opq      # adds OPQ (faiss OPQMatrix, 20 iterations; ~9 min more)
    python benchmarks/codebooks.py --perplexity   # what the best structure buys the model (~15 min)

``--perplexity``: the plan's pq5 candidate at 8% (the main job's point, English served), its codes refitted on the
same rows in the head's metric (the rows outside the band) by faiss's plain PQ and by product-residual 32 x 4 (no
row weights: faiss's residual quantizers take none; the product's own codes are weighted by frequency and
expected probability), each model measured on the texts of ``benchmarks/tail.py`` (perplexity ratios to dense,
512 tokens, ``<bos>`` first). Writes ``benchmarks/results/codebooks_perplexity.json``.

Rows: 60,000 of Gemma-3-270M's embedding rows sampled at random (seed 0), less their rank-16 SVD part, as the
tail's codes see them. Figure: relative squared error ||X - X^||^2 / ||X||^2, at 128 bytes a row (pq5 on the
640-wide rows) and 80 (pq8). Every quantizer is faiss's (``pip install "hf-factor-embed[pq]"``), 8-bit codes.
Writes ``benchmarks/results/codebooks.json``; prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors import safe_open

from hf_factor_embed.models.bundled import bundled_model

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent))  # tail.py's texts


def tail_rows(count: int) -> np.ndarray:
    """``count`` rows of Gemma-3's embedding less their rank-16 part (the product codes' input)."""
    with safe_open(glob.glob(str(bundled_model("gemma3")) + "/*.safetensors")[0], "pt") as f:
        weight = f.get_tensor(next(k for k in f.keys() if "embed_tokens" in k)).float()
    rows = weight[torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0))[:count]]
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    return (rows - (u[:, :16] * s[:16]) @ vh[:16]).numpy().astype("float32")


def product(x: np.ndarray, subspaces: int) -> np.ndarray:
    quantizer = faiss.ProductQuantizer(x.shape[1], subspaces, 8)
    quantizer.train(x)
    return quantizer.decode(quantizer.compute_codes(x))


def two_stage(x: np.ndarray, first: int, second: int) -> np.ndarray:
    coarse = product(x, first)
    return coarse + product((x - coarse).astype("float32"), second)


def product_residual(x: np.ndarray, splits: int, stages: int) -> np.ndarray:
    quantizer = faiss.ProductResidualQuantizer(x.shape[1], splits, stages, 8)
    quantizer.train(x)
    return quantizer.decode(quantizer.compute_codes(x))


def row_scaled(x: np.ndarray, subspaces: int) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True).astype("float32")
    return product((x / norms).astype("float32"), subspaces) * norms.astype("float16").astype("float32")


def optimized_rotation(x: np.ndarray, subspaces: int) -> np.ndarray:
    opq = faiss.OPQMatrix(x.shape[1], subspaces)
    opq.niter = 20
    opq.train(x)
    rotated = opq.apply_py(x)
    return opq.reverse_transform(product(rotated, subspaces))


def variants(bytes_per_row: int, opq: bool) -> dict:
    half = bytes_per_row // 2
    out = {
        f"pq, {bytes_per_row} B": lambda x: product(x, bytes_per_row),
        f"pq, {bytes_per_row} B + fp16 row scale (2 B)": lambda x: row_scaled(x, bytes_per_row),
        f"two product stages, {half} + {half} B": lambda x: two_stage(x, half, half),
        f"product-residual, {half} groups x 2 stages": lambda x: product_residual(x, half, 2),
    }
    if bytes_per_row == 128:
        out["product-residual, 32 groups x 4 stages"] = lambda x: product_residual(x, 32, 4)
    if opq:
        out[f"pq, {bytes_per_row} B, OPQ rotation"] = lambda x: optimized_rotation(x, bytes_per_row)
    return out


def perplexity_of_structures(out: Path, train_rows: int) -> None:
    """The pq5 8% point with its codes refitted by plain PQ and by product-residual 32 x 4 (see the docstring)."""
    import copy

    from tail import SERVED, UNSEEN
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_factor_embed as hfe
    import hf_factor_embed.factorize.banded as banded
    from hf_factor_embed.calibration.collect import collect_stats
    from hf_factor_embed.calibration.model_text import bos_prefix, special_token_ids
    from hf_factor_embed.calibration.sources import load_source
    from hf_factor_embed.calibration.stats import CalibrationStats
    from hf_factor_embed.factorize.product import metric_root
    from hf_factor_embed.measure.perplexity import perplexity
    from hf_factor_embed.pipeline.budget import candidates

    folder = bundled_model("gemma3")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bos = bos_prefix(tokenizer)
    v, d = dense.get_input_embeddings().weight.shape

    def ids_of(text: str) -> torch.Tensor:
        return tokenizer(text[: 16 * 512], add_special_tokens=False, return_tensors="pt").input_ids[0][:512]

    sources = {name: load_source(name) for name in SERVED}
    evals = {name: ids_of(s.split(0.2)[1]) for name, s in sources.items()}
    evals |= {name: ids_of(load_source(name).text) for name in UNSEEN}
    parts = []
    for source in sources.values():
        ids = tokenizer(source.split(0.2)[0], add_special_tokens=False, return_tensors="pt").input_ids[0]
        parts.append(collect_stats(dense, ids, model_tokens=2048, progress=False, bos_id=bos))
    stats = CalibrationStats.combine(*parts, equal=True)
    special = special_token_ids(dense, tokenizer).numel()
    (candidate,) = candidates(v, d, int(0.08 * v * d * 4), bits=4, special_rows=special, formats=("pq5",))

    seen = {}
    fit = banded.fit_product_codes

    def recording_fit(residual, **kwargs):  # the rows the codes are fitted on, in the head's metric
        seen.update(residual=residual, **kwargs)
        return fit(residual, **kwargs)

    banded.fit_product_codes = recording_fit
    try:
        model = hfe.patch_model(
            copy.deepcopy(dense),
            rank=candidate.rank,
            method=candidate.method(),
            calibration=stats,
            tokenizer=tokenizer,
            bits=4,
        )
    finally:
        banded.fit_product_codes = fit
    layer = model.get_input_embeddings()
    root, _ = metric_root(seen["metric"], d)
    y = (seen["residual"].index_fill(1, seen["columns"], 0.0).double() @ root).float()
    outside = (seen["row_weights"] > 0).nonzero().squeeze(1)
    m = layer.codebooks.shape[0]
    ours = layer.codebooks.detach()[torch.arange(m), layer.tail_codes.long()].reshape(v, d)
    rows_now = layer.dense_weight().detach()
    x = y[outside].numpy()
    sample = x[np.random.default_rng(0).permutation(len(x))[:train_rows]]

    def refit(quantizer) -> np.ndarray:
        quantizer.train(sample)
        return quantizer.decode(quantizer.compute_codes(x))

    structures = {
        "pq5 (the product's, weighted)": ours[outside].numpy(),
        "pq5 (faiss PQ, 128 x 8 bits)": refit(faiss.ProductQuantizer(d, 128, 8)),
        "product-residual 32 x 4 (faiss)": refit(faiss.ProductResidualQuantizer(d, 32, 4, 8)),
    }
    dense_ppl = {k: perplexity(dense, ids, window=len(ids) + 1, bos_id=bos) for k, ids in evals.items()}
    result = {"candidate": candidate.name, "band_rows": candidate.band_rows, "train_rows": len(sample), "rows": {}}
    energy = float((x.astype("float64") ** 2).sum())
    print(f"{'structure':<34} {'rel. sq.':>8} " + " ".join(f"{k[-6:]:>7}" for k in evals))
    for name, decoded in structures.items():
        rows = rows_now.clone()
        change = (torch.from_numpy(decoded) - ours[outside]) @ layer.tail_rotation.detach()
        rows[outside] += change
        probe = copy.deepcopy(dense)
        probe.get_input_embeddings().weight.data = rows  # the tied head reads the same rows
        ratio = {k: perplexity(probe, ids, window=len(ids) + 1, bos_id=bos) / dense_ppl[k] for k, ids in evals.items()}
        error = float(((decoded - x).astype("float64") ** 2).sum()) / energy
        result["rows"][name] = {"rel_sq_error": round(error, 4), "ratio": {k: round(r, 4) for k, r in ratio.items()}}
        print(f"{name:<34} {error:8.4f} " + " ".join(f"{r:7.3f}" for r in ratio.values()), flush=True)
        del probe
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--opq", action="store_true")
    parser.add_argument("--perplexity", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.perplexity:
        perplexity_of_structures(args.out or RESULTS / "codebooks_perplexity.json", args.rows)
        return
    args.out = args.out or RESULTS / "codebooks.json"
    x = tail_rows(args.rows)
    energy = float((x.astype("float64") ** 2).sum())
    results = {}
    print(f"{'variant':<46} {'rel. sq. error':>14} {'seconds':>8}")
    for bytes_per_row in (128, 80):
        for name, quantize in variants(bytes_per_row, args.opq).items():
            started = time.perf_counter()
            error = float(((quantize(x) - x).astype("float64") ** 2).sum()) / energy
            seconds = time.perf_counter() - started
            results[name] = {"rel_sq_error": round(error, 4), "seconds": round(seconds, 1)}
            print(f"{name:<46} {error:14.4f} {seconds:8.0f}", flush=True)
    args.out.write_text(json.dumps({"rows": args.rows, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
