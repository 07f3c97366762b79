"""Codebook structures for the product-coded tail, at equal bytes a row: plain product quantization (the product's),
a second product stage on the residual, product-residual quantization (group residual VQ, as CARVQ), a per-row
fp16 scale, and (``--opq``) an optimized rotation.

    python benchmarks/codebooks.py            # ~25 min on 2 cores (product-residual is faiss's slowest)
    python benchmarks/codebooks.py --opq      # adds OPQ (faiss OPQMatrix, 20 iterations; ~9 min more)

Rows: 60,000 of Gemma-3-270M's embedding rows sampled at random (seed 0), less their rank-16 SVD part, as the
tail's codes see them. Figure: relative squared error ||X - X^||^2 / ||X||^2, at 128 bytes a row (pq5 on the
640-wide rows) and 80 (pq8). Every quantizer is faiss's (``pip install "hf-factor-embed[pq]"``), 8-bit codes.
Writes ``benchmarks/results/codebooks.json``; prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors import safe_open

from hf_factor_embed.bundled import bundled_model

RESULTS = Path(__file__).parent / "results"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--opq", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "codebooks.json")
    args = parser.parse_args()
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
