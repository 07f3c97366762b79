"""Factorization time and peak memory at the sizes of real vocabularies.

    python benchmarks/speed.py                      # SmolLM2's 49152 x 576 and a Llama-3-sized 128256 x 4096
    python benchmarks/speed.py --inference          # head and generation timings (benchmarks/inference.py)

Random matrices of the given shapes (the time and memory of the Gram eigendecomposition route do not depend on
the values); for each: the factorization time of plain SVD and of the two-sided weighted fit, against
torch.linalg.svd where it is affordable, and the process's peak resident memory. Writes
benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from hf_factor_embed.factorize.lowrank import estimate_bytes, weighted_lowrank


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    if "--inference" in sys.argv[1:2]:  # the inference part: head and generation timings (inference.py)
        from inference import main as inference_main

        inference_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description="factorization speed and memory")
    parser.add_argument("--shapes", nargs="+", default=["49152x576x256", "128256x4096x1024"], help="VxDxRANK")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    args = parser.parse_args()
    rows = []
    for spec in args.shapes:
        v, d, r = (int(x) for x in spec.split("x"))
        g = torch.Generator().manual_seed(0)
        w = torch.randn(v, d, generator=g)
        counts = torch.randint(0, 100, (v,), generator=g).double()
        x = torch.randn(4 * d, d, generator=g)
        cov = (x.T @ x / x.shape[0]).double()
        row = {"shape": [v, d], "rank": r, "estimate_gib": round(estimate_bytes(v, d, r) / 2**30, 2)}
        t0 = time.perf_counter()
        weighted_lowrank(w, r)
        row["svd_gram_seconds"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        weighted_lowrank(w, r, row_weights=counts + 1, col_cov=cov)
        row["two_sided_seconds"] = round(time.perf_counter() - t0, 2)
        if v * d <= 50_000_000:
            t0 = time.perf_counter()
            torch.linalg.svd(w, full_matrices=False)
            row["torch_full_svd_seconds"] = round(time.perf_counter() - t0, 2)
        row["peak_rss_gib"] = round(peak_rss_gib(), 2)
        print(row, flush=True)
        rows.append(row)
        del w
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/speed.py", "rows": rows}, indent=2))
    print("| V x d | rank | Gram SVD s | two-sided s | torch full SVD s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape'][0]} x {r['shape'][1]} | {r['rank']} | {r['svd_gram_seconds']} | {r['two_sided_seconds']} "
            f"| {r.get('torch_full_svd_seconds', '')} | {r['peak_rss_gib']} |"
        )


if __name__ == "__main__":
    main()
