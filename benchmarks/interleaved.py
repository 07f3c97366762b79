"""Decode tokens/s of exported files measured side by side: rounds alternate between the files in one process, so
this machine's drift (a third between minutes) falls on every file alike. ``deploy.py`` measures each file in a
process of its own, one after another, which is right for peak memory and wrong for a ratio of a few percent.

    python benchmarks/interleaved.py /tmp/w/depet/executorch/body-int4/model.pte \\
        /tmp/w/depet/executorch/shortlist-int4/model.pte --inputs /tmp/w/depet/executorch/inputs.json

Files: ``.onnx`` (ONNX Runtime) or ``.pte`` (ExecuTorch), as ``deploy.py --keep`` leaves them; ``--inputs``: that
run's ``inputs.json`` (its 128-token pydoc prompt, ``<bos>`` first). A round: per file, the prompt prefilled (not
timed), then ``--tokens`` greedy tokens, timed. Medians over ``--rounds``; the ratios are to the first file.
Writes ``benchmarks/results/interleaved_<name>.json`` (``--name``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help=".onnx or .pte files; ratios are to the first")
    parser.add_argument("--inputs", type=Path, required=True, help="a deploy.py run's inputs.json (its prompt)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="latest", help="the results file's suffix")
    args = parser.parse_args(argv)
    missing = [f for f in [*args.files, args.inputs] if not f.is_file()]
    if missing or len(args.files) < 2 or min(args.tokens, args.rounds) < 1:
        problem = f"no file at {missing[0]}" if missing else "give two files or more, --tokens and --rounds > 0"
        sys.exit(f"interleaved.py: error: {problem}")
    prompt = np.array([json.loads(args.inputs.read_text())["prompt"]])
    runtimes = [_open(path) for path in args.files]
    seconds: list[list[float]] = [[] for _ in runtimes]
    for _ in range(args.rounds):
        for times, runtime in zip(seconds, runtimes, strict=True):
            times.append(_decode_seconds(runtime, prompt, args.tokens))
    command = "python benchmarks/interleaved.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows = {
        str(path): {"decode_tok_s": args.tokens / statistics.median(t)}
        for path, t in zip(args.files, seconds, strict=True)
    }
    first = rows[str(args.files[0])]["decode_tok_s"]
    for row, times in zip(rows.values(), seconds, strict=True):
        row |= {"x_first": row["decode_tok_s"] / first, "rounds_tok_s": [args.tokens / s for s in times]}
    result = {"command": command, "tokens": args.tokens, "rounds": args.rounds, "files": rows}
    for path, row in rows.items():
        spread = f"{min(row['rounds_tok_s']):.1f}-{max(row['rounds_tok_s']):.1f}"
        print(f"{path:<60}{row['decode_tok_s']:>8.1f} tok/s ({spread}) {row['x_first']:>6.2f}x", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"interleaved_{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _open(path: Path):
    if path.suffix == ".pte":
        sys.path.insert(0, str(Path(__file__).parent))
        from deploy_executorch import ExecuTorchSteps

        return ExecuTorchSteps(path)
    from hf_factor_embed.export.runtime import OnnxDecoder

    return OnnxDecoder(path)


def _decode_seconds(runtime, prompt: np.ndarray, tokens: int) -> float:
    logits, cache = runtime.step(prompt, runtime.empty_cache())
    started = time.perf_counter()
    for _ in range(tokens):
        logits, cache = runtime.step(logits.argmax(-1)[:, None], cache)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
