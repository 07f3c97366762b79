"""Large vocabularies: compression sized to what a user serves, against quantization and vocabulary trimming.

    python benchmarks/vocab.py                      # Gemma-3-270M and SmolLM2, every served set (~40 min, 2 cores)
    python benchmarks/vocab.py --models smollm2 --sets en --quick   # a few minutes

For each model and each served set (English kinds; English + 3 languages; English + 8 languages) the statistics
of every served source are gathered once (its calibration part: all of it counted, the model run over its first
``--model-tokens``), combined with equal weights, and a few points of the banded method are built at growing
size (band share 0.9; the band and B int8, the tail's codes A int4). Each point is measured (perplexity ratio to
dense, ``--eval-tokens`` tokens of each text) on the held-back part of every served source, on English kinds never
calibrated on (license texts, the gettext messages' English originals) and on languages not served. Beside them,
on the same windows: int8 / int6 g16 / int4 g32 / asymmetric 4-bit quantization of the dense embedding, and hard
vocabulary trimming as vocabtrimmer does it (only kept tokens' rows; other ids read as the unknown token and
never predicted) at the bytes of each point. Then greedy generation tokens/s and load time, dense vs the English
point (Gemma). Writes ``benchmarks/results/vocab.json``, ``vocab.png`` and prints the tables.

Text comes from the machine only: pydoc_data, /usr/share/common-licenses, Debian changelogs, gettext catalogs
(:mod:`hf_factor_embed.sources`).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_factor_embed as hfe
from hf_factor_embed.bundled import bundled_model
from hf_factor_embed.calibration import collect_stats
from hf_factor_embed.calibration_stats import CalibrationStats
from hf_factor_embed.compress import _embedding_bytes
from hf_factor_embed.evaluation import perplexity
from hf_factor_embed.factorize.banded import BandedMethod, band_scores
from hf_factor_embed.model_text import bos_prefix, special_token_ids
from hf_factor_embed.peers import TrimmedPeer, quantization_peers
from hf_factor_embed.sources import load_source

RESULTS = Path(__file__).parent / "results"
ENGLISH = ["pydoc", "changelogs"]
SETS = {
    "en": ENGLISH,
    "en+3": [*ENGLISH, "lang:de", "lang:ru", "lang:zh_CN"],
    "en+8": [*ENGLISH, *(f"lang:{c}" for c in ("de", "ru", "zh_CN", "fr", "es", "ja", "ar", "hi"))],
}
ENGLISH_UNSEEN = ["licenses", "messages"]
LANGUAGES = ["de", "ru", "zh_CN", "fr", "ja", "ko"]  # measured in every set (served or not)
RANKS = {
    "gemma3": {"en": [96, 160, 256], "en+3": [256], "en+8": [384]},
    "smollm2": {"en": [128, 256, 384], "en+3": [384], "en+8": [512]},
}
BAND_SHARE, BITS = 0.9, 4


def token_ids(tokenizer, text: str, limit: int | None = None) -> torch.Tensor:
    text = text if limit is None else text[: 16 * limit]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return ids if limit is None else ids[:limit]


def evaluation_texts(tokenizer, sets: list[str], eval_tokens: int) -> dict[str, torch.Tensor]:
    """The held-back part (first 20%) of every source any set serves or measures: one text per source, so dense
    and peer figures are measured once, and a served source is never measured on its calibration part."""
    names = dict.fromkeys([*(n for s in sets for n in SETS[s]), *ENGLISH_UNSEEN, *(f"lang:{c}" for c in LANGUAGES)])
    return {name: token_ids(tokenizer, load_source(name).split(0.2)[1], eval_tokens) for name in names}


def calibration_ids(tokenizer, served: list[str]) -> dict[str, torch.Tensor]:
    return {name: token_ids(tokenizer, load_source(name).split(0.2)[0]) for name in served}


def ratios(evals: dict, dense: dict, score) -> dict[str, float]:
    return {name: round(score(ids) / dense[name], 4) for name, ids in evals.items()}


def ppl(model, bos_id):
    return lambda ids: perplexity(model, ids, window=min(512, ids.numel()), bos_id=bos_id)


def run_model(name: str, sets: list[str], args, save) -> dict:
    folder = bundled_model(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bos = bos_prefix(tokenizer)  # every window fed as the tokenizer feeds text: Gemma's <bos> first
    v, d = dense.get_input_embeddings().weight.shape
    fp32 = v * d * 4
    evals = evaluation_texts(tokenizer, sets, args.eval_tokens)
    out = _earlier(args, name) or {"model": name, "vocab": v, "dim": d, "fp32_bytes": fp32}
    out["eval_tokens"] = args.eval_tokens
    if not set(evals) <= set(out.get("dense_perplexity", {})):
        out["dense_perplexity"] = {k: ppl(dense, bos)(ids) for k, ids in evals.items()}
    dense_ppl = out["dense_perplexity"]
    out.setdefault("peers", {})
    for p in (p for p in quantization_peers() if not set(evals) <= set(out["peers"].get(p.name, {}).get("ratio", {}))):
        score = lambda ids, p=p: p.perplexity(dense, ids, min(512, ids.numel()), bos_id=bos)  # noqa: E731
        out["peers"][p.name] = {"bytes": p.stored_bytes(v, d), "share": p.stored_bytes(v, d) / fp32}
        out["peers"][p.name]["ratio"] = ratios(evals, dense_ppl, score)
    out.setdefault("sets", {})
    save(out)
    for set_name in (s for s in sets if s not in out["sets"]):
        started = time.perf_counter()
        calibration = calibration_ids(tokenizer, SETS[set_name])
        parts = [
            collect_stats(dense, ids, model_tokens=args.model_tokens, progress=False, bos_id=bos)
            for ids in calibration.values()
        ]
        stats = CalibrationStats.combine(*parts, equal=True)
        points = []
        ranks = RANKS[name][set_name][1:2] if args.quick else RANKS[name][set_name]
        for rank in ranks:
            model = hfe.patch_model(
                copy.deepcopy(dense),
                rank=rank,
                method=BandedMethod(BAND_SHARE),
                calibration=stats,
                tokenizer=tokenizer,
                bits=BITS,
            )
            stored = _embedding_bytes(model)["stored"]
            band = model.get_input_embeddings().dense_index.numel()
            point = {"rank": rank, "band_rows": band, "bytes": stored, "share": stored / fp32}
            point["ratio"] = ratios(evals, dense_ppl, ppl(model, bos))
            del model
            if rank != ranks[len(ranks) // 2]:  # trimming at one size per set: its middle point
                points.append(point)
                print(f"{name} {set_name} r={rank}: {point['share']:.1%} of fp32, {point['ratio']}", flush=True)
                continue
            trim_rows = min(v, stored // (d + 2))  # int8 rows with an fp16 scale, as the band is stored
            scores = band_scores(stats)
            scores[special_token_ids(dense, tokenizer)] = float("inf")  # trimming keeps the special tokens too
            kept = torch.argsort(scores, descending=True, stable=True)[:trim_rows]
            trim = TrimmedPeer("trim", kept, _unk_id(tokenizer))
            trimmed = ratios(
                evals, dense_ppl, lambda ids, trim=trim: trim.perplexity(dense, ids, min(512, ids.numel()), bos_id=bos)
            )
            point["trim_equal_bytes"] = {"rows": int(trim_rows), "ratio": trimmed}
            points.append(point)
            print(f"{name} {set_name} r={rank}: {point['share']:.1%} of fp32, {point['ratio']}", flush=True)
        out["sets"][set_name] = {
            "served": SETS[set_name],
            "points": points,
            "seconds": round(time.perf_counter() - started, 1),
        }
        save(out)
    if name == "gemma3" and not args.quick and "en" in sets:
        en_rank = RANKS[name]["en"][1]
        out["speed"] = speed(dense, folder, tokenizer, calibration_ids(tokenizer, SETS["en"]), en_rank, args)
        save(out)
    return out


def _earlier(args, name: str) -> dict | None:
    """With --resume: what an earlier run of this command measured for ``name`` (dense, peers, finished sets)."""
    if not (args.resume and args.out.is_file()):
        return None
    return next((r for r in json.loads(args.out.read_text())["results"] if r["model"] == name), None)


def _unk_id(tokenizer) -> int:
    return tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0


def speed(dense, folder: Path, tokenizer, calibration: dict, rank: int, args) -> dict:
    """Greedy generation tokens/s and load seconds, dense vs the English point, in interleaved rounds."""
    model = hfe.patch_model(
        copy.deepcopy(dense),
        rank=rank,
        method=BandedMethod(BAND_SHARE),
        calibration=calibration,
        model_tokens=args.model_tokens,
        bits=BITS,
    )
    prompt = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    times = {"dense": [], "factorized": []}
    for round_ in range(4):
        for label, m in (("dense", dense), ("factorized", model)):
            started = time.perf_counter()
            m.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)
            if round_:
                times[label].append(time.perf_counter() - started)
    loads = {"dense": [], "factorized": []}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for _ in range(3):
            for label, path in (("dense", folder), ("factorized", tmp)):
                started = time.perf_counter()
                AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
                loads[label].append(time.perf_counter() - started)
    tps = {k: 32 / statistics.median(t) for k, t in times.items()}
    load = {k: statistics.median(t) for k, t in loads.items()}
    return {"rank": rank, "tokens_per_s": tps, "speedup": tps["factorized"] / tps["dense"], "load_seconds": load}


def render(results: list[dict], command: str) -> str:
    lines = [f"`{command}`", ""]
    for r in results:
        for set_name, s in r["sets"].items():
            served = s["served"]
            texts = list(s["points"][0]["ratio"]) if s["points"] else []
            lines.append(f"**{r['model']}** ({r['vocab']:,} x {r['dim']}), served {set_name}: {', '.join(served)}")
            lines.append("")
            lines.append("| point | bytes (of fp32) | " + " | ".join(texts) + " |")
            lines.append("|---|---|" + "---|" * len(texts))
            for p in s["points"]:
                head = f"banded r={p['rank']} ({p['band_rows']:,} exact rows)"
                lines.append(
                    f"| {head} | {p['share']:.1%} | " + " | ".join(f"{p['ratio'][t]:.3f}" for t in texts) + " |"
                )
                t = p.get("trim_equal_bytes")
                if t is None:
                    continue
                lines.append(
                    f"| trim to {t['rows']:,} rows (same bytes) | {p['share']:.1%} | "
                    + " | ".join(f"{t['ratio'][x]:.3f}" for x in texts)
                    + " |"
                )
            for name, p in r["peers"].items():
                lines.append(
                    f"| {name} | {p['share']:.1%} | " + " | ".join(f"{p['ratio'][t]:.3f}" for t in texts) + " |"
                )
            lines.append("")
            lines.append("Served (held back): " + ", ".join(served) + "; every other column never calibrated on.")
            lines.append("")
        if "speed" in r:
            sp = r["speed"]
            lines.append(
                f"{r['model']} greedy generation (32 tokens, median of 3 interleaved rounds), r={sp['rank']}: "
                f"dense {sp['tokens_per_s']['dense']:.1f} tok/s, factorized {sp['tokens_per_s']['factorized']:.1f} "
                f"({sp['speedup']:.2f}x); load {sp['load_seconds']['dense']:.2f} s vs "
                f"{sp['load_seconds']['factorized']:.2f} s"
            )
            lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.5 * len(results)), squeeze=False)
    for row, r in zip(axes, results, strict=True):
        for set_name, s in r["sets"].items():
            served = s["served"]
            xs = [100 * p["share"] for p in s["points"]]
            worst = [max(p["ratio"][t] for t in served) for p in s["points"]]
            unseen = [max(v for t, v in p["ratio"].items() if t not in served) for p in s["points"]]
            trimmed = [p for p in s["points"] if "trim_equal_bytes" in p]
            trim_x = [100 * p["share"] for p in trimmed]
            trim = [max(v for t, v in p["trim_equal_bytes"]["ratio"].items() if t not in served) for p in trimmed]
            row[0].plot(xs, worst, "o-", label=f"factorized, served {set_name}")
            row[1].plot(xs, unseen, "o-", label=f"factorized, served {set_name}")
            row[1].plot(trim_x, trim, "x", markersize=9, label=f"trimmed, same bytes, {set_name}")
            for name, p in r["peers"].items():
                row[0].plot(100 * p["share"], max(p["ratio"][t] for t in served), "s", label=f"{name} ({set_name})")
        row[0].set(
            xlabel="embedding bytes, % of fp32",
            ylabel="worst served ratio to dense",
            yscale="log",
            title=f"{r['model']}: served text (held back)",
        )
        row[1].set(
            xlabel="embedding bytes, % of fp32",
            ylabel="worst not-served ratio to dense",
            yscale="log",
            title=f"{r['model']}: text never calibrated on",
        )
        for ax in row:
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gemma3", "smollm2"], choices=sorted(RANKS))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="served sets for Gemma-3")
    parser.add_argument("--smollm2-sets", nargs="+", default=["en"], choices=list(SETS))
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--model-tokens", type=int, default=2048, help="tokens of each source the model reads")
    parser.add_argument("--quick", action="store_true", help="one point per set, no speed")
    parser.add_argument("--resume", action="store_true", help="keep what --out already holds (dense, peers, sets)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vocab.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    command = "python benchmarks/vocab.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    kept = []  # with --resume, the other models an earlier run measured stay in the file
    if args.resume and args.out.is_file():
        kept = [r for r in json.loads(args.out.read_text())["results"] if r["model"] not in args.models]

    def save(current: dict) -> None:  # after every set: a long run that stops keeps what it measured
        done = kept + [r for r in results if r is not current] + [current]
        args.out.write_text(json.dumps({"command": command, "results": done}, indent=1))

    for name in args.models:
        results.append(run_model(name, args.sets if name == "gemma3" else args.smollm2_sets, args, save))
        save(results[-1])
    print(render(kept + results, command))
    try:
        plot(kept + results, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
