"""Large vocabularies: compression sized to what a user serves, against quantization and vocabulary trimming.

    python benchmarks/vocab.py                      # Gemma-3-270M and SmolLM2, every served set (~40 min, 2 cores)
    python benchmarks/vocab.py --models smollm2 --sets en --quick   # a few minutes

For each model and each served set (English kinds; English + 3 languages; English + 8 languages) the statistics
of every served source are gathered once (its calibration part: all of it counted, the model run over its first
``--model-tokens``), combined with equal weights, and the plan (:mod:`hf_factor_embed.pipeline.plan`, what ``compress
--max-bytes`` runs) is run at a few byte budgets: every tail format that fits (low rank; product codes of 16, 8 or
4 values a byte), each with the largest band that fits, the band int8 and the tail's low-rank codes int4. Each
candidate is measured (perplexity ratio to dense, ``--eval-tokens`` tokens of each text, ``<bos>`` first) on the
held-back part of every served source, on English kinds never calibrated on (license texts, the gettext
messages' English originals) and on languages not served; the plan's choice is marked. Beside them, on the same
windows: int8 / int6 g16 / int4 g32 / asymmetric 4-bit quantization of the dense embedding, and hard vocabulary
trimming as vocabtrimmer does it (only kept tokens' rows; other ids read as the unknown token and never predicted)
at each budget's bytes. Then greedy generation tokens/s and load time, dense vs the plan's choice at 8% with
English served (Gemma). Writes ``benchmarks/results/vocab.json``, ``vocab.png`` and prints the tables.

Text comes from the machine only: pydoc_data, /usr/share/common-licenses, Debian changelogs, gettext catalogs
(:mod:`hf_factor_embed.calibration.sources`).
"""

from __future__ import annotations

import argparse
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
from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.model_text import bos_prefix, special_token_ids
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.calibration.stats import CalibrationStats
from hf_factor_embed.measure.peers import TrimmedPeer, quantization_peers
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.bundled import bundled_model
from hf_factor_embed.pipeline.plan import choose, describe, run_plan
from hf_factor_embed.quantizer.sizes import embedding_bytes

RESULTS = Path(__file__).parent / "results"
ENGLISH = ["pydoc", "changelogs"]
SETS = {
    "en": ENGLISH,
    "en+3": [*ENGLISH, "lang:de", "lang:ru", "lang:zh_CN"],
    "en+8": [*ENGLISH, *(f"lang:{c}" for c in ("de", "ru", "zh_CN", "fr", "es", "ja", "ar", "hi"))],
}
ENGLISH_UNSEEN = ["licenses", "messages"]
LANGUAGES = ["de", "ru", "zh_CN", "fr", "ja", "ko"]  # measured in every set (served or not)
#: Byte budgets (shares of the fp32 embedding) the plan is run at, per model and served set.
BUDGETS = {
    "gemma3": {"en": [0.06, 0.08, 0.10], "en+3": [0.10], "en+8": [0.14]},
    "smollm2": {"en": [0.10, 0.15, 0.20], "en+3": [0.20], "en+8": [0.25]},
}
#: The English budget whose chosen model's generation speed and load time are measured (the main job's).
SPEED_SHARE = 0.08
BITS = 4


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
    kept_model = None
    for set_name in (s for s in sets if s not in out["sets"]):
        started = time.perf_counter()
        stats = served_stats(dense, tokenizer, SETS[set_name], args.model_tokens, bos)
        special = special_token_ids(dense, tokenizer)
        shares = BUDGETS[name][set_name]
        shares = shares[len(shares) // 2 : len(shares) // 2 + 1] if args.quick else shares
        points = []
        for share in shares:
            budget = int(share * fp32)
            chosen, record = plan_point(dense, tokenizer, stats, special, budget, fp32, evals, dense_ppl, bos, set_name)
            points.append(record)
            for line in describe(record):
                print(f"{name} {set_name} {line}", flush=True)
            if set_name == "en" and share == SPEED_SHARE:
                kept_model = chosen
            del chosen
        out["sets"][set_name] = {
            "served": SETS[set_name],
            "points": points,
            "seconds": round(time.perf_counter() - started, 1),
        }
        save(out)
    if name == "gemma3" and not args.quick and kept_model is not None:
        out["speed"] = speed(dense, folder, tokenizer, kept_model)
        save(out)
    return out


def served_stats(dense, tokenizer, served: list[str], model_tokens: int, bos) -> CalibrationStats:
    """Every served source's calibration part, all of it counted and the model run over its first
    ``model_tokens``, combined with equal weights (as ``compress`` combines named sources)."""
    parts = [
        collect_stats(dense, ids, model_tokens=model_tokens, progress=False, bos_id=bos)
        for ids in calibration_ids(tokenizer, served).values()
    ]
    return CalibrationStats.combine(*parts, equal=True)


def plan_point(dense, tokenizer, stats, special, budget: int, fp32: int, evals, dense_ppl, bos, set_name: str):
    """The plan at ``budget`` bytes (:func:`hf_factor_embed.pipeline.plan.run_plan`: every tail format that fits, each
    at
    its largest band, measured on every text beside trimming at the same bytes): (the chosen model, the record)."""

    def patch(copy_, candidate):
        method = candidate.method()
        return hfe.patch_model(
            copy_, rank=candidate.rank, method=method, calibration=stats, tokenizer=tokenizer, bits=BITS
        )

    def measure_trim(rows: int) -> dict[str, float]:
        trim = TrimmedPeer.ranked(stats, special, rows, _unk_id(tokenizer))  # the special tokens kept too
        return {n: trim.perplexity(dense, ids, min(512, ids.numel()), bos_id=bos) for n, ids in evals.items()}

    return run_plan(
        dense,
        budget=budget,
        fp32_bytes=fp32,
        patch=patch,
        measure=lambda m: {n: ppl(m, bos)(ids) for n, ids in evals.items()},
        measure_trim=measure_trim,
        dense_perplexity=dense_ppl,
        stored_bytes_of=lambda m: embedding_bytes(m)["stored"],
        served=SETS[set_name],
        bits=BITS,
        special_rows=int(special.numel()),
    )


def _earlier(args, name: str) -> dict | None:
    """With --resume: what an earlier run of this command measured for ``name`` (dense, peers, finished sets)."""
    if not (args.resume and args.out.is_file()):
        return None
    return next((r for r in json.loads(args.out.read_text())["results"] if r["model"] == name), None)


def _unk_id(tokenizer) -> int:
    return tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0


def speed(dense, folder: Path, tokenizer, model) -> dict:
    """Greedy generation tokens/s and load seconds, dense vs the plan's choice at ``SPEED_SHARE`` (English served),
    in interleaved rounds."""
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
    share = round(embedding_bytes(model)["share"], 4)
    return {"share": share, "tokens_per_s": tps, "speedup": tps["factorized"] / tps["dense"], "load_seconds": load}


def rechoose(results: list[dict]) -> None:
    """Each budget's choice and reason again from its measured candidates, by the plan's current
    rule
    (:func:`hf_factor_embed.pipeline.plan.choose` reads only the records): a file measured before
    the rule changed follows it."""
    for r in results:
        for s in r["sets"].values():
            for point in s["points"]:
                chosen, reason = choose(point["candidates"], s["served"])
                point |= {"chosen": chosen["name"], "reason": reason}


def render(results: list[dict], command: str) -> str:
    lines = [f"`{command}`", ""]
    for r in results:
        for set_name, s in r["sets"].items():
            served = s["served"]
            texts = list(r["dense_perplexity"])
            lines.append(f"**{r['model']}** ({r['vocab']:,} x {r['dim']}), served {set_name}: {', '.join(served)}")
            lines.append("")
            lines.append("| budget | point | bytes (of fp32) | " + " | ".join(texts) + " |")
            lines.append("|---|---|---|" + "---|" * len(texts))
            for p in s["points"]:
                budget = f"{p['budget_share']:.0%}"
                for c in p["candidates"]:
                    mark = " (chosen)" if c["name"] == p["chosen"] else ""
                    head = f"{c['name']}{mark}, {c['band_rows']:,} exact rows"
                    cells = " | ".join(f"{c['ratio'][t]:.3g}" for t in texts)
                    lines.append(f"| {budget} | {head} | {c['share']:.1%} | {cells} |")
                cells = " | ".join(f"{p['trim']['ratio'][t]:.3g}" for t in texts)
                lines.append(f"| {budget} | trim to {p['trim']['rows']:,} rows | {p['budget_share']:.1%} | {cells} |")
            for name, p in r["peers"].items():
                cells = " | ".join(f"{p['ratio'][t]:.3g}" for t in texts)
                lines.append(f"| | {name} | {p['share']:.1%} | {cells} |")
            lines.append("")
            lines.append("Served (held back): " + ", ".join(served) + "; every other column never calibrated on.")
            lines.append("")
        if "speed" in r:
            sp = r["speed"]
            lines.append(
                f"{r['model']} greedy generation (32 tokens, median of 3 interleaved rounds), the plan's choice at "
                f"{sp['share']:.1%}: dense {sp['tokens_per_s']['dense']:.1f} tok/s, factorized "
                f"{sp['tokens_per_s']['factorized']:.1f} ({sp['speedup']:.2f}x); load "
                f"{sp['load_seconds']['dense']:.2f} s vs {sp['load_seconds']['factorized']:.2f} s"
            )
            lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Per model: the worst served ratio and the worst ratio not served, against bytes, for the plan's choice, each
    candidate format and trimming at the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.5 * len(results)), squeeze=False)
    for row, r in zip(axes, results, strict=True):
        for set_name, s in r["sets"].items():
            served = s["served"]

            def worst(ratio, inside, served=served):
                return max(v for t, v in ratio.items() if (t in served) == inside)

            formats = sorted({c["name"] for p in s["points"] for c in p["candidates"]})
            for fmt in formats:
                pts = [c for p in s["points"] for c in p["candidates"] if c["name"] == fmt]
                xs = [100 * c["share"] for c in pts]
                row[0].plot(xs, [worst(c["ratio"], True) for c in pts], "o-", label=f"{fmt}, served {set_name}")
                row[1].plot(xs, [worst(c["ratio"], False) for c in pts], "o-", label=f"{fmt}, served {set_name}")
            xs = [100 * p["budget_share"] for p in s["points"]]
            trim = [worst(p["trim"]["ratio"], False) for p in s["points"]]
            row[1].plot(xs, trim, "x--", markersize=9, label=f"trimmed, same bytes, {set_name}")
            for name, p in r["peers"].items():
                row[0].plot(100 * p["share"], worst(p["ratio"], True), "s", label=f"{name} ({set_name})")
                row[1].plot(100 * p["share"], worst(p["ratio"], False), "s", label=f"{name} ({set_name})")
        for ax, what in zip(row, ("worst served ratio to dense", "worst not-served ratio to dense"), strict=True):
            ax.set(xlabel="embedding bytes, % of fp32", ylabel=what, yscale="log", title=f"{r['model']}: {what}")
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gemma3", "smollm2"], choices=sorted(BUDGETS))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="served sets for Gemma-3")
    parser.add_argument("--smollm2-sets", nargs="+", default=["en"], choices=list(SETS))
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--model-tokens", type=int, default=2048, help="tokens of each source the model reads")
    parser.add_argument("--quick", action="store_true", help="one budget per set (its middle one), no speed")
    parser.add_argument("--resume", action="store_true", help="keep what --out already holds (dense, peers, sets)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vocab.json")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: re-choose, print and plot what --out holds"
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.out.read_text())
        rechoose(saved["results"])
        args.out.write_text(json.dumps(saved, indent=1))
        print(render(saved["results"], saved["command"]))
        plot(saved["results"], args.out.with_suffix(".png"))
        return
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
