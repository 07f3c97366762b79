"""How long ``from_pretrained`` takes: a factorized checkpoint against the dense model it came from.

    python benchmarks/load.py --checkpoint out/gemma3-en --dense bundled:gemma3 --runs 7

Loads alternate (dense, ours, dense, ours, ...) in one process after one warm-up load of each, so both read from
the page cache and the machine's drift falls on both; best and median of ``--runs`` each. The factorized load is
split into transformers' part and this package's after-loading step (integers read back into the factors, the
band's rows put back, the checks), timed around ``FactorEmbedHfQuantizer._process_model_after_weight_loading``.
Writes benchmarks/results/load_<checkpoint name>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM

from hf_factor_embed.models.bundled import resolve
from hf_factor_embed.quantizer.hf_quantizer import FactorEmbedHfQuantizer

RESULTS = Path(__file__).parent / "results"


class AfterLoadingTimer:
    """Seconds spent in the quantizer's after-loading step, one entry a load."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.original = FactorEmbedHfQuantizer._process_model_after_weight_loading

    def __enter__(self) -> AfterLoadingTimer:
        original, seconds = self.original, self.seconds

        def timed(quantizer, model, **kwargs):
            started = time.perf_counter()
            try:
                return original(quantizer, model, **kwargs)
            finally:
                seconds.append(time.perf_counter() - started)

        FactorEmbedHfQuantizer._process_model_after_weight_loading = timed
        return self

    def __exit__(self, *exc) -> None:
        FactorEmbedHfQuantizer._process_model_after_weight_loading = self.original


def load_seconds(folder: Path) -> float:
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder)
    seconds = time.perf_counter() - started
    del model
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", default="bundled:gemma3", help="the dense model: a folder or bundled:<name>")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file() or args.runs < 1:
        problem = f"no checkpoint at {args.checkpoint}" if args.runs >= 1 else "--runs must be > 0"
        sys.exit(f"load.py: error: {problem}")
    dense_folder = Path(resolve(args.dense))
    times: dict[str, list[float]] = {"dense": [], "ours": []}
    with AfterLoadingTimer() as after:
        load_seconds(dense_folder), load_seconds(args.checkpoint)  # warm-up: imports, page cache
        after.seconds.clear()
        for _ in range(args.runs):
            times["dense"].append(load_seconds(dense_folder))
            times["ours"].append(load_seconds(args.checkpoint))
    result = {
        "command": "python benchmarks/load.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "dense": str(dense_folder),
        "checkpoint": str(args.checkpoint),
        "seconds": {k: {"best": min(v), "median": statistics.median(v), "all": v} for k, v in times.items()},
        "after_loading_seconds": {"best": min(after.seconds), "median": statistics.median(after.seconds)},
    }
    best, median = (result["seconds"]["ours"][k] / result["seconds"]["dense"][k] for k in ("best", "median"))
    result["ratio"] = {"best": best, "median": median}
    print(f"from_pretrained, {args.runs} loads each, alternating (best / median seconds)")
    rows = {"dense": times["dense"], str(args.checkpoint): times["ours"], "  its after-loading step": after.seconds}
    for name, seconds in rows.items():
        print(f"{name:<44}{min(seconds):>8.3f}{statistics.median(seconds):>8.3f}")
    print(f"{'ours / dense':<44}{best:>7.2f}x{median:>7.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"load_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
