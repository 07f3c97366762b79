"""ONNX Runtime on this CPU: a factorized checkpoint's exported file beside its dense model's, in one run.

    python benchmarks/export.py --checkpoint out/gemma3-en --dense bundled:gemma3          # ~6 min
    python benchmarks/export.py --checkpoint out/smollm2-r256 --dense bundled:smollm2
    python benchmarks/export.py --checkpoint out/minilm-r64 --dense PATH/TO/all-MiniLM-L6-v2   # an encoder
    python benchmarks/export.py --checkpoint out/gemma3-en --dense bundled:gemma3 --executorch   # .pte files
    python benchmarks/export.py --checkpoint out/gemma3-en --dense bundled:gemma3 --head shortlist   # either format

Both models are exported the same way (:mod:`hf_factor_embed.export`: torch's exporter, the cache as tensors, the
last position's logits); the factorized one through ``hf_factor_embed.export.export``, with its integers kept and
its check. Measured for each file: its bytes and the embedding's share of them, the time to create an ONNX
Runtime session (best of 3), prefill tokens/s (a 128-token prompt of held-back pydoc text, ``<bos>`` first where the
tokenizer adds it) and greedy decode tokens/s (32 tokens after it), best of 3, on every core ONNX Runtime uses by
default. Decoders are then checked on every prompt of ``benchmarks/generation.py`` (32 greedy tokens): the file's
tokens against transformers' on the same checkpoint. Encoders: sentences/s and the largest difference from
transformers' hidden states. ``--head shortlist`` exports the factorized file with that head
(:mod:`hf_factor_embed.export.head`) and checks its greedy tokens against transformers' full head on every prompt, in
either format. Writes ``benchmarks/results/export_<checkpoint name>.json`` (``export_executorch_...``; a shortlist
head adds ``_shortlist``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_factor_embed.calibration.data import pydoc_topics_text
from hf_factor_embed.calibration.model_text import bos_prefix
from hf_factor_embed.export import export
from hf_factor_embed.export.onnx import export_onnx
from hf_factor_embed.export.runtime import OnnxDecoder, OnnxEncoder
from hf_factor_embed.measure.continuations import greedy
from hf_factor_embed.models.load import load_model
from hf_factor_embed.models.names import check_model_name

sys.path.insert(0, str(Path(__file__).parent))
from generation import PROMPTS  # noqa: E402  (the generation benchmark's prompts, written for it)

RESULTS = Path(__file__).parent / "results"
PREFILL, DECODE, REPEATS = 128, 32, 3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", required=True, help="its dense model: a folder or bundled:NAME")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt in the check")
    parser.add_argument("--executorch", action="store_true", help="ExecuTorch .pte files instead of ONNX ones")
    parser.add_argument("--head", default="full", help="the factorized file's head: full or shortlist[:K]")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        sys.exit(f"export.py: error: no checkpoint at {args.checkpoint}")
    check_model_name(args.dense, "--dense model")
    result = {"command": "python benchmarks/export.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    suffix = "" if args.head == "full" else "_shortlist"
    if args.executorch:
        return _executorch(args.checkpoint, args.dense, result, args.head, args.new_tokens, suffix)
    with tempfile.TemporaryDirectory() as scratch:
        report = export(args.checkpoint, Path(scratch, "factorized"), head=args.head)
        dense, tokenizer = load_model(args.dense)
        dense_file = export_onnx(dense, _mkdir(Path(scratch, "dense")), report.kind)
        dense_embedding = dense.get_input_embeddings().weight.numel() * 4
        del dense
        files = {"dense": (dense_file, dense_embedding), "factorized": (Path(report.file), report.embedding_bytes)}
        measure = _decoder_speed if report.kind == "decoder" else _encoder_speed
        result["rows"] = {
            name: {**_bytes(path, embedding), **measure(path, tokenizer)} for name, (path, embedding) in files.items()
        }
        result["export"] = report.to_dict()
        if report.kind == "decoder":
            runtime = OnnxDecoder(report.file)
            result["greedy_check"] = _greedy_check(args.checkpoint, runtime, tokenizer, args.new_tokens)
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"export_{args.checkpoint.name}{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _executorch(checkpoint: Path, dense_name: str, result: dict, head: str, new_tokens: int, suffix: str) -> dict:
    """Both models as ``.pte`` programs (XNNPACK-lowered), run by ExecuTorch's Python runtime one token a call:
    bytes, load (best of 3), and tokens/s over a 32-token prompt and 32 greedy tokens after it (best of 3); then
    the factorized program's greedy tokens against transformers' on every prompt."""
    from hf_factor_embed.export.executorch import ExecuTorchDecoder, export_executorch

    with tempfile.TemporaryDirectory() as scratch:
        report = export(checkpoint, Path(scratch, "factorized"), format="executorch", head=head)
        dense, tokenizer = load_model(dense_name)
        dense_file = export_executorch(dense, _mkdir(Path(scratch, "dense")))
        files = {
            "dense": (dense_file, dense.get_input_embeddings().weight.numel() * 4),
            "factorized": (Path(report.file), report.embedding_bytes),
        }
        del dense
        prompt = _prompt_ids(tokenizer, 32)[0].tolist()
        result["rows"] = {}
        for name, (path, embedding) in files.items():
            runtime = ExecuTorchDecoder(path)
            seconds = _best(lambda runtime=runtime: runtime.greedy(prompt, DECODE))
            row = {**_bytes(path, embedding), "load_s": _best(lambda path=path: ExecuTorchDecoder(path))}
            result["rows"][name] = row | {"tok_s": (len(prompt) + DECODE - 1) / seconds}
        result["export"] = report.to_dict()
        runtime = ExecuTorchDecoder(Path(report.file))
        result["greedy_check"] = check = _greedy_check(checkpoint, runtime, tokenizer, new_tokens)
        # the control: how far XNNPACK's own float kernels part the dense program from transformers' dense model
        control = _greedy_check(dense_name, ExecuTorchDecoder(dense_file), tokenizer, new_tokens)
        result["dense_greedy_check"] = control
    lines = [f"{checkpoint.name}: ExecuTorch (XNNPACK), one token a call, this CPU"]
    lines += [
        f"{name:<12}{r['file_bytes'] / 1e6:>9.1f} MB{r['embedding_bytes'] / 1e6:>9.1f} MB embedding"
        f"{r['load_s']:>8.2f} s load{r['tok_s']:>9.1f} tok/s"
        for name, r in result["rows"].items()
    ]
    lines.append(f"greedy tokens identical to transformers: {check['identical']} of {check['prompts']} prompts")
    lines.append(f"dense program's, to dense transformers': {control['identical']} of {control['prompts']} prompts")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"export_executorch_{checkpoint.name}{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _bytes(path: Path, embedding_bytes: int) -> dict:
    return {"file_bytes": path.stat().st_size, "embedding_bytes": embedding_bytes}


def _best(function, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def _prompt_ids(tokenizer, length: int) -> np.ndarray:
    ids = tokenizer(pydoc_topics_text()[:4000], add_special_tokens=False).input_ids
    bos = bos_prefix(tokenizer)
    ids = ([bos] if bos is not None else []) + ids
    return np.array([ids[:length]])


def _decoder_speed(path: Path, tokenizer) -> dict:
    return decoder_speed(path, _prompt_ids(tokenizer, PREFILL))[0]


def decoder_speed(path: Path, prompt: np.ndarray, runtime_class=OnnxDecoder) -> tuple[dict, OnnxDecoder]:
    """Load (best of 3), prefill of ``prompt`` (1, n) and 32 greedy tokens after it (best of 3), in tokens/s; and
    the session measured, for what else the caller measures (``runtime_class``: anything with ``OnnxDecoder``'s
    ``step`` and ``empty_cache``, opened from ``path``)."""
    load = _best(lambda: runtime_class(path))
    runtime = runtime_class(path)
    prefill = _best(lambda: runtime.step(prompt, runtime.empty_cache()))
    logits, cache = runtime.step(prompt, runtime.empty_cache())

    def decode() -> None:
        step_logits, step_cache = logits, cache
        for _ in range(DECODE):
            step_logits, step_cache = runtime.step(step_logits.argmax(-1)[:, None], step_cache)

    speed = {"load_s": load, "prefill_tok_s": prompt.shape[1] / prefill, "decode_tok_s": DECODE / _best(decode)}
    return speed, runtime


def _encoder_speed(path: Path, tokenizer) -> dict:
    load = _best(lambda: OnnxEncoder(path))
    runtime = OnnxEncoder(path)
    sentences = [s for s in pydoc_topics_text().split("\n") if len(s) > 40][:64]
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    seconds = _best(lambda: runtime.hidden_states(batch))
    return {"load_s": load, "sentences_s": len(sentences) / seconds}


def _greedy_check(checkpoint: Path | str, runtime, tokenizer, new_tokens: int) -> dict:
    """Every generation-benchmark prompt: the file's greedy tokens (``runtime``: its ONNX Runtime or ExecuTorch
    decoder) against transformers' on the same checkpoint (a folder or ``bundled:NAME``)."""
    from transformers import AutoModelForCausalLM

    from hf_factor_embed.models.bundled import resolve

    prompts = [p for group in PROMPTS.values() for p in group]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve(str(checkpoint))).eval()
    reference = greedy(model, tokenizer, prompts, new_tokens)
    ours = [runtime.greedy(tokenizer(p).input_ids, new_tokens) for p in prompts]
    same = [a == b for a, b in zip(ours, reference, strict=True)]
    differing = [p for p, s in zip(prompts, same, strict=True) if not s]
    return {"prompts": len(prompts), "identical": sum(same), "differing": differing}


def render(name: str, result: dict) -> str:
    rows = result["rows"]
    decoder = "decode_tok_s" in rows["dense"]
    speed = ("prefill tok/s", "decode tok/s") if decoder else ("sentences/s", "")
    lines = [
        f"{name}: ONNX Runtime, this CPU",
        f"{'file':<12}{'MB':>9}{'embedding MB':>14}{'load s':>9}{speed[0]:>15}{speed[1]:>14}",
    ]
    for label, r in rows.items():
        figures = (r["prefill_tok_s"], r["decode_tok_s"]) if decoder else (r["sentences_s"], None)
        last = f"{figures[1]:>14.1f}" if figures[1] is not None else ""
        lines.append(
            f"{label:<12}{r['file_bytes'] / 1e6:>9.1f}{r['embedding_bytes'] / 1e6:>14.1f}{r['load_s']:>9.2f}"
            f"{figures[0]:>15.1f}{last}"
        )
    d, f = rows["dense"], rows["factorized"]
    key = "decode_tok_s" if decoder else "sentences_s"
    lines.append(
        f"factorized / dense: bytes {f['file_bytes'] / d['file_bytes']:.2f}x, "
        f"load {f['load_s'] / d['load_s']:.2f}x, {key} {f[key] / d[key]:.2f}x"
    )
    check = result.get("greedy_check")
    if check:
        lines.append(f"greedy tokens identical to transformers: {check['identical']} of {check['prompts']} prompts")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
