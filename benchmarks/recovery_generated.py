"""Recovery on text the teacher writes itself, evaluated on every local kind and language training never saw.

    python benchmarks/recovery_generated.py                        # r=256 and r=128; factors, lora, all
    python benchmarks/recovery_generated.py --ranks 256 --modes factors --distill-minutes 4

SmolLM2-135M-Instruct. The student is calibrated on Python's language reference (``pydoc``, its training part,
as in ``benchmarks/recovery.py``); recovery then trains on the teacher's own text (``--self-generate`` tokens,
sampled with the package's default settings) mixed with that same pydoc training part, the rule of
``hf-factor-embed recover --text ... --self-generate N``. Evaluated, ``--eval-tokens`` each, on the held-back part
of pydoc and of every other kind and language in ``--unseen``: none of that text is in calibration or training.
Stages per rank: training-free (banded), cheap (refit on the teacher's hidden states of generated + pydoc text),
then distillation from the cheap result, once per mode in ``--modes`` (factors / factors + LoRA / everything),
each for ``--distill-minutes``. Minutes count generation + cheap + distillation, all on this machine's CPU.
Writes benchmarks/results/recovery_generated.json, a plot of ratio vs minutes, and a RESULTS.md section.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import write_results_md  # noqa: E402
from recovery import PeakMemory, blocks_of, timed_distill_config  # noqa: E402

import hf_factor_embed as hfe  # noqa: E402
from hf_factor_embed.calibration.sources import load_source  # noqa: E402
from hf_factor_embed.measure.perplexity import perplexity  # noqa: E402
from hf_factor_embed.models.bundled import cache_dir, resolve  # noqa: E402
from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals, distill  # noqa: E402
from hf_factor_embed.recovery.generate import self_generate  # noqa: E402

TRAIN_SOURCE = "pydoc"
UNSEEN = ("licenses", "changelogs", "messages", "lang:de", "lang:fr", "lang:ru", "lang:zh_CN", "lang:ja", "lang:ar")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    args = _parse()
    if args.replot:
        record = json.loads((RESULTS / "recovery_generated.json").read_text())
        _plot(record, RESULTS / "recovery_generated.png")
        return
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve("bundled:smollm2")
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    evals, train_ids = _texts(tok, args)
    generation = _generate(dense, tok, args)
    gen_ids = torch.tensor([i for t in generation["data"]["text"] for i in tok(t).input_ids])
    stream = torch.cat([gen_ids, train_ids])  # the mixing rule of `recover`: generated text first, then the given
    train_blocks = blocks_of(stream, args.block_size)
    held_back = blocks_of(evals[TRAIN_SOURCE], args.block_size)
    half = args.cheap_tokens // 2
    started = time.perf_counter()
    signals = collect_teacher_signals(dense, torch.cat([gen_ids[:half], train_ids[:half]]), progress=False)
    signal_seconds = time.perf_counter() - started

    rows = []

    def add(rank, stage, model, minutes, **extra):
        ppl = {name: perplexity(model, ids) for name, ids in evals.items()}
        rows.append({"rank": rank, "stage": stage, "minutes": minutes, "ppl": ppl, **extra})
        print(rank, stage, f"{minutes:.1f} min", {k: round(v, 2) for k, v in ppl.items()}, flush=True)

    add(None, "dense", dense, 0.0)
    gen_minutes = generation["seconds"] / 60
    for rank in args.ranks:
        start = hfe.patch_model(copy.deepcopy(dense), rank=rank, calibration=train_ids[: args.calibration_tokens])
        add(rank, "training-free (banded)", start, 0.0)
        cheap = copy.deepcopy(start)
        result = cheap_refit(cheap, signals, CheapRefitConfig())
        cheap_minutes = gen_minutes + (result["seconds"] + signal_seconds) / 60
        add(rank, "cheap", cheap, cheap_minutes, tokens=args.cheap_tokens)
        for mode in args.modes:
            student = copy.deepcopy(cheap)
            with PeakMemory() as memory, tempfile.TemporaryDirectory() as tmp:
                summary = distill(
                    student, train_blocks, held_back, timed_distill_config(tmp, mode, args), teacher=dense
                )
            minutes = cheap_minutes + summary["seconds"] / 60
            extra = dict(tokens=summary["tokens"], steps=summary["steps"], peak_extra_mb=memory.peak_mb)
            add(rank, f"cheap + distill ({mode})", student, minutes, mode=mode, **extra)
            del student
        del start, cheap

        _write(rows, generation, gen_ids, train_ids, args)  # after every rank: a later failure keeps these rows
    record = _write(rows, generation, gen_ids, train_ids, args)
    text = render(record)
    print(text)
    write_results_md(text, "recovery-generated")
    _plot(record, RESULTS / "recovery_generated.png")


def _write(rows, generation, gen_ids, train_ids, args) -> dict:
    """The JSON record; with --merge, the rows an earlier run measured for ranks this run does not measure first."""
    out = RESULTS / "recovery_generated.json"
    record = {
        "command": ("python benchmarks/recovery_generated.py " + " ".join(sys.argv[1:])).strip(),
        "generation": {k: v for k, v in generation.items() if k != "data"},
        "train_tokens": {"generated": gen_ids.numel(), TRAIN_SOURCE: train_ids.numel()},
        "rows": rows,
    }
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())
        kept = [r for r in earlier["rows"] if r["rank"] is not None and r["rank"] not in args.ranks]
        record["rows"] = rows[:1] + kept + rows[1:]
        record["earlier"] = {k: v for k, v in earlier.items() if k != "rows"} | earlier.get("earlier", {})
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return record


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--modes", nargs="+", default=["factors", "lora", "all"], choices=["factors", "lora", "all"])
    parser.add_argument("--self-generate", type=int, default=60_000, help="tokens the teacher writes")
    parser.add_argument("--unseen", nargs="+", default=list(UNSEEN))
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--cheap-tokens", type=int, default=16384)
    parser.add_argument("--distill-minutes", type=float, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--replot", action="store_true", help="only draw the plot again from the JSON")
    parser.add_argument("--merge", action="store_true", help="keep the earlier JSON's rows of the other ranks")
    return parser.parse_args()


def _texts(tok, args) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Held-back token ids of pydoc and every unseen source; pydoc's training part."""
    evals, train_ids = {}, None
    for name in (TRAIN_SOURCE, *args.unseen):
        held, rest = load_source(name).split()
        # ~6 characters a token at most: reading 8x the characters needed keeps tokenizing short
        evals[name] = tok(held[: 8 * args.eval_tokens], return_tensors="pt").input_ids[0][: args.eval_tokens]
        if name == TRAIN_SOURCE:
            train_ids = tok(rest, return_tensors="pt").input_ids[0]
    return evals, train_ids


def _generate(dense, tok, args) -> dict:
    """The teacher's text (read back from the cache when an earlier run made it), with what making it cost."""
    started = time.perf_counter()
    with PeakMemory() as memory:
        data = self_generate(dense, tok, args.self_generate, cache_dir=cache_dir() / "selfgen")
    made = json.loads(data.info.description)  # seconds, tokens, settings: recorded when it was sampled
    cached = time.perf_counter() - started < made["seconds"] / 10
    return {"data": data, "texts": len(data), "peak_extra_mb": None if cached else memory.peak_mb, **made}


def render(record: dict) -> str:
    rows = record["rows"]
    dense = rows[0]["ppl"]
    names = list(dense)
    gen = record["generation"]
    head = "| rank | stage | minutes | " + " | ".join(n.removeprefix("lang:") for n in names) + " |"
    lines = [
        f"Command: `{record['command']}`. SmolLM2-135M-Instruct. Calibrated on `{TRAIN_SOURCE}` (training part); "
        f"recovery trains on {record['train_tokens']['generated']} tokens the teacher wrote + "
        f"{record['train_tokens'][TRAIN_SOURCE]} of pydoc. Every column is held-back text; only pydoc's kind was "
        "trained on. Ratios of perplexity to dense, same run; minutes = generation + cheap + distillation.",
        "",
        f"Generation: {gen['tokens']} tokens in {gen['seconds']:.0f} s ({gen['tokens_per_s']:.0f} tokens/s, "
        f"batch {gen['generation']['batch_size']}, temperature {gen['generation']['temperature']}, top-k "
        f"{gen['generation']['top_k']}, top-p {gen['generation']['top_p']}); "
        + (
            f"peak memory +{gen['peak_extra_mb']:.0f} MiB."
            if gen["peak_extra_mb"] is not None
            else "read back from the cache: the figures are those of the run that sampled it."
        ),
        "",
        head,
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['ppl'][n] / dense[n]:.3f}x" if r["rank"] else f"{r['ppl'][n]:.2f}" for n in names]
        lines.append(f"| {r['rank'] or 'dense'} | {r['stage']} | {r['minutes']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(record: dict, path: Path) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    dense = rows[0]["ppl"]
    languages = [n for n in dense if n.startswith("lang:")]

    def ratio(row, panel):
        if panel != "languages":
            return row["ppl"][panel] / dense[panel]
        return math.exp(sum(math.log(row["ppl"][n] / dense[n]) for n in languages) / len(languages))

    panels = ("licenses", "changelogs", "languages")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, panel in zip(axes, panels, strict=True):
        for rank in sorted({r["rank"] for r in rows if r["rank"]}):
            base = [r for r in rows if r["rank"] == rank and "mode" not in r]
            for mode in sorted({r["mode"] for r in rows if r["rank"] == rank and r.get("mode")}):
                points = base + [r for r in rows if r["rank"] == rank and r.get("mode") == mode]
                ax.plot(
                    [p["minutes"] for p in points],
                    [ratio(p, panel) for p in points],
                    marker="o",
                    label=f"r={rank} {mode}",
                )
        title = "gettext languages (geometric mean)" if panel == "languages" else panel
        ax.set_title(f"{title}, never trained on", fontsize=10)
        ax.set_xlabel("CPU minutes (generation + cheap + distillation)")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0].set_ylabel("perplexity / dense")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
