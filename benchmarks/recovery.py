"""Recovery after factorization: SmolLM2 before recovery, after `cheap`, after `distill`, on two kinds of text.

    python benchmarks/recovery.py                                  # r=256 and r=128, 30 distillation minutes each
    python benchmarks/recovery.py --ranks 128 --distill-minutes 10

Training text: Python's language reference (``pydoc_data.topics``): its first --eval-tokens tokens are held back
for evaluation, everything after them trains (calibration, cheap refit, distillation). Text of another kind,
never trained on: the license texts under /usr/share/common-licenses (its first --eval-tokens tokens). Each rank
starts from the default training-free method (``banded``, calibrated on --calibration-tokens of the training
text); ``cheap`` and ``distill`` each start from that same model. Perplexity with 512-token windows; the dense
model and int4 g32 (the quantization peer) in the same run. Writes benchmarks/results/recovery.json and a table
in benchmarks/RESULTS.md.
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
from quality import fake_quantize, load_smollm2, write_results_md  # noqa: E402

import hf_factor_embed as hfe  # noqa: E402
from hf_factor_embed.calibration.data import source_text  # noqa: E402
from hf_factor_embed.measure.perplexity import perplexity  # noqa: E402
from hf_factor_embed.recovery import (  # noqa: E402
    CheapRefitConfig,
    DistillConfig,
    cheap_refit,
    collect_teacher_signals,
    distill,
)

TRAIN_SOURCE, OTHER_SOURCE = "pydoc", "licenses"


def blocks_of(ids: torch.Tensor, block: int):
    from datasets import Dataset

    n = ids.numel() // block
    return Dataset.from_dict({"input_ids": ids[: n * block].view(n, block).tolist()}).with_format("torch")


def timed_distill_config(out: str, train: str, args) -> DistillConfig:
    """Distillation bounded by --distill-minutes only (no step limit, no checkpoints or evaluations on the way)."""
    return DistillConfig(
        output_dir=out,
        train=train,
        max_steps=10**9,
        max_minutes=args.distill_minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=10**9,
        eval_every=10**9,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--cheap-tokens", type=int, default=16384)
    parser.add_argument("--cheap-steps", type=int, default=CheapRefitConfig.steps)
    parser.add_argument("--cheap-lr", type=float, default=CheapRefitConfig.lr)
    parser.add_argument(
        "--distill-from", default="cheap", choices=["cheap", "training-free"], help="the model distillation starts from"
    )
    parser.add_argument("--distill-minutes", type=float, default=30)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=DistillConfig.lr)
    parser.add_argument("--train", default="factors", choices=["factors", "lora", "all"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recovery.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    dense, tok = load_smollm2()
    ids = {name: tok(source_text(name), return_tensors="pt").input_ids[0] for name in (TRAIN_SOURCE, OTHER_SOURCE)}
    evals = {name: t[: args.eval_tokens] for name, t in ids.items()}
    train_ids = ids[TRAIN_SOURCE][args.eval_tokens :]

    def score(model) -> dict[str, float]:
        return {name: perplexity(model, e) for name, e in evals.items()}

    rows = []

    def add(rank, stage, ppl, **extra):
        rows.append({"rank": rank, "stage": stage, **{f"ppl_{k}": v for k, v in ppl.items()}, **extra})
        print(rank, stage, {k: round(v, 2) for k, v in ppl.items()}, extra, flush=True)

    add(None, "dense", score(dense))
    w = dense.get_input_embeddings().weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.copy_(fake_quantize(saved, 4, 32)[0])
    add(None, "int4 g32", score(dense))
    with torch.no_grad():
        w.copy_(saved)

    with PeakMemory() as teacher_memory:
        started = time.perf_counter()
        signals = collect_teacher_signals(dense, train_ids[: args.cheap_tokens], progress=False)
        signal_seconds = time.perf_counter() - started
    train_blocks = blocks_of(train_ids, args.block_size)
    held_back = blocks_of(evals[TRAIN_SOURCE], args.block_size)
    model_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    for rank in args.ranks:
        started = time.perf_counter()
        start = hfe.patch_model(copy.deepcopy(dense), rank=rank, calibration=train_ids[: args.calibration_tokens])
        add(
            rank,
            "training-free (banded)",
            score(start),
            seconds=time.perf_counter() - started,
            tokens=args.calibration_tokens,
        )

        student = copy.deepcopy(start)
        with PeakMemory() as refit_memory:
            result = cheap_refit(student, signals, CheapRefitConfig(steps=args.cheap_steps, lr=args.cheap_lr))
        add(
            rank,
            "cheap",
            score(student),
            seconds=result["seconds"] + signal_seconds,
            tokens=args.cheap_tokens,
            steps=result["steps"],
            head_kl=[result["before"]["head_kl"], result["after"]["head_kl"]],
            # beyond the models already in memory: the teacher pass, then the refit (signals, logits, Adam state)
            extra_memory_mb=[teacher_memory.peak_mb, refit_memory.peak_mb],
            model_mb=model_bytes / 2**20,
        )
        if args.distill_from == "training-free":
            student = copy.deepcopy(start)
        with tempfile.TemporaryDirectory() as tmp:
            config = timed_distill_config(tmp, args.train, args)
            summary = distill(student, train_blocks, held_back, config, teacher=dense)
        stage = "cheap + distill" if args.distill_from == "cheap" else "distill"
        add(
            rank,
            f"{stage} ({args.train}, {args.distill_minutes:g} min)",
            score(student),
            seconds=summary["seconds"],
            tokens=summary["tokens"],
            steps=summary["steps"],
        )
        del student, start

    command = "python benchmarks/recovery.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))
    text = render(command.strip(), rows)
    print(text)
    write_results_md(text, "recovery")


class PeakMemory:
    """The peak growth of this process's resident memory while the block runs (sampled every 20 ms), in MiB."""

    def __enter__(self):
        import threading

        import psutil

        self._process, self._stop = psutil.Process(), threading.Event()
        self._base = self._peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = (self._peak - self._base) / 2**20


def render(command: str, rows: list[dict]) -> str:
    dense = next(r for r in rows if r["stage"] == "dense")
    lines = [
        f"Command: `{command}`. SmolLM2-135M; trained on `{TRAIN_SOURCE}` (held-back part evaluated), "
        f"`{OTHER_SOURCE}` never trained on. Ratios to dense in the same run.",
        "",
        f"| rank | stage | {TRAIN_SOURCE} (held back) | {OTHER_SOURCE} (other kind) | tokens | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[f'ppl_{s}']:.2f} ({r[f'ppl_{s}'] / dense[f'ppl_{s}']:.3f}x)" for s in (TRAIN_SOURCE, OTHER_SOURCE)
        ]
        tokens = r.get("tokens", "")
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else ""
        lines.append(f"| {r['rank'] or 'dense'} | {r['stage']} | {cells[0]} | {cells[1]} | {tokens} | {seconds} |")
    for r in rows:
        if "extra_memory_mb" in r:
            teacher_mb, refit_mb = r["extra_memory_mb"]
            lines.append(
                f"\ncheap r={r['rank']}: {r['steps']} steps; head KL on training positions "
                f"{r['head_kl'][0]:.4f} -> {r['head_kl'][1]:.4f}; peak memory beyond the models already loaded: "
                f"teacher pass +{teacher_mb:.0f} MiB, refit +{refit_mb:.0f} MiB "
                f"(the fp32 model: {r['model_mb']:.0f} MiB)."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
