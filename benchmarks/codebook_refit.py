"""Does refitting the product-coded tail's centroids to dense's head (KL divergence) buy fidelity at equal bytes?

    python benchmarks/codebook_refit.py --checkpoint out/gemma3-en --dense bundled:gemma3          # ~35 min

The k-means that fits the codes minimizes squared error in the head's metric, not the divergence a user reads.
Here the codes stay and only the centroids move (``cheap_refit(..., tensors=("codebooks",))``: the codebooks are
stored in float, so the checkpoint's bytes do not change): Adam on the KL divergence from dense's next-token
distribution at dense's own final hidden states, with the input rows' relative error beside it, on the served
sources' calibration text: the calibration parts of pydoc_data.topics and the Debian changelogs, and text the dense
model samples (``generated``, seed 1, not the main job's seed 0), ``--tokens`` of each, ``<bos>`` first in each
512-token window. One run a size in ``--tokens``.

Measured before and after, teacher-forced on one 512-token window a text (``<bos>`` first; the windows ``compress``
measures): the held-back fifths of pydoc and the changelogs, 511 tokens of generated text never trained on, and
text never calibrated on (licenses, the gettext messages' English, German, Russian, Chinese, Arabic). Beside them
the int6 g16 and int4 g32 peers of ``compression.json`` (the same windows, measured by ``compress``). Writes
``benchmarks/results/codebook_refit_<checkpoint name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from hf_factor_embed.calibration.generated import GeneratedSource, generated_text
from hf_factor_embed.calibration.model_text import bos_prefix
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.measure.fidelity import fidelity
from hf_factor_embed.models.load import load_model
from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals

RESULTS = Path(__file__).parent / "results"
SERVED = ("pydoc", "changelogs")
NEVER_SEEN = ("licenses", "messages", "lang:de", "lang:ru", "lang:zh_CN", "lang:ar")
PEERS = ("int6 g16 (Q6_K stand-in)", "int4 g32")
WINDOW = 512


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a product-coded checkpoint folder")
    parser.add_argument("--dense", required=True, help="its dense model: a folder or bundled:NAME")
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=[2044, 8176], help="calibration tokens a source (multiples of 511)"
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    if any(n <= 0 or n % (WINDOW - 1) for n in args.tokens):
        parser.error(f"--tokens: whole multiples of {WINDOW - 1} (the text of one window after <bos>)")
    torch.manual_seed(0)
    dense, tokenizer = load_model(args.dense)
    bos = bos_prefix(tokenizer)

    def ids_of(text: str, n: int | None = None) -> torch.Tensor:
        return torch.tensor(tokenizer(text[:400_000], add_special_tokens=False).input_ids[:n])

    started = time.perf_counter()
    most = max(args.tokens)
    sample = generated_text(dense, tokenizer, GeneratedSource(most + 600, seed=1), most + 600, progress=False)
    generated = ids_of(sample)
    if generated.numel() < most + WINDOW:  # the evaluated window must lie after every calibration part
        raise SystemExit(f"sampled {generated.numel()} tokens, fewer than {most + WINDOW}: sample more")
    print(f"generated {generated.numel()} tokens in {time.perf_counter() - started:.0f} s", flush=True)
    calibration = {name: ids_of(load_source(name).split(0.2)[0]) for name in SERVED} | {"generated": generated}
    texts = {name: ids_of(load_source(name).split(0.2)[1], WINDOW - 1) for name in SERVED}
    texts["generated"] = generated[-(WINDOW - 1) :]  # after every calibration size's part
    texts |= {name: ids_of(load_source(name).text, WINDOW - 1) for name in NEVER_SEEN}

    def measure(model) -> dict:
        out = {}
        for name, ids in texts.items():
            f = fidelity(dense, model, ids, window=WINDOW, bos_id=bos)
            out[name] = {"kld": round(f.mean_kld, 5), "same_top": round(f.same_top, 4)}
        return out

    command = "python benchmarks/codebook_refit.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    peers = json.loads((args.checkpoint / "compression.json").read_text())["peers"]
    result = {"command": command, "steps": args.steps, "lr": args.lr, "texts": list(texts)}
    # compress's generated text is its own sample (seed 0): its peers' figures are not on this window
    result["peers"] = {p: {t: peers[p]["kld"].get(t) if t != "generated" else None for t in texts} for p in PEERS}
    student, _ = load_model(args.checkpoint)
    result["before"] = measure(student)
    print("before", json.dumps(result["before"]), flush=True)
    result["runs"] = {}
    for tokens in args.tokens:
        student, _ = load_model(args.checkpoint)
        # each part a whole number of windows (tokens a multiple of WINDOW - 1), so no window spans two sources
        parts = torch.cat([ids[:tokens] for ids in calibration.values()])
        signals = collect_teacher_signals(dense, parts, window=WINDOW, batch_size=1, progress=False, bos_id=bos)
        config = CheapRefitConfig(steps=args.steps, lr=args.lr, tensors=("codebooks",))
        refit = cheap_refit(student, signals, config)
        run = {"refit": refit, "after": measure(student)}
        result["runs"][str(tokens)] = run
        print(tokens, json.dumps(run), flush=True)
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"codebook_refit_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def render(name: str, result: dict) -> str:
    sizes = list(result["runs"])
    head = f"{name}: mean KL divergence from dense / same top; centroids refit on N calibration tokens a source"
    columns = ["text", "before"] + [f"refit, N = {n}" for n in sizes] + list(PEERS)
    lines = [head, " | ".join(columns)]
    for text in result["texts"]:
        cells = [text, _cell(result["before"][text])]
        cells += [_cell(result["runs"][n]["after"][text]) for n in sizes]
        cells += [f"{result['peers'][p][text]:.4f}" if result["peers"][p][text] is not None else "" for p in PEERS]
        lines.append(" | ".join(cells))
    for n in sizes:
        refit = result["runs"][n]["refit"]
        lines.append(
            f"N = {n}: {refit['positions']} positions, {refit['steps']} steps in {refit['seconds']:.0f} s; head KL "
            f"on training positions {refit['before']['head_kl']:.4f} -> {refit['after']['head_kl']:.4f}"
        )
    return "\n".join(lines)


def _cell(row: dict) -> str:
    return f"{row['kld']:.4f} / {row['same_top']:.1%}"


if __name__ == "__main__":
    main()
