"""One decode step of the output head alone, in ExecuTorch: where a step's time goes, op by op.

    python benchmarks/head_step.py --checkpoint out/gemma3-en        # ~1 min on this CPU

The head is traced alone (one position's hidden state in, its logits out) and lowered as ``export --format
executorch`` lowers a whole model (XNNPACK partitioner, the stored-factor layers): dense's fp32 head (an
``nn.Linear`` of the checkpoint's shape, random weights: only its time is read), and the checkpoint's head as the
``.pte`` holds it (``precomputed``: the matrices' fp32 values for the matmuls) and with the integers dequantized in
the graph every step (the layout before 2026-12-07), each with the two-stage shortlist (``--shortlist``, the export's
default). Per head: the median of 20 calls, and ExecuTorch's ETDump profile of 5 calls, its slowest ops (portable
kernels by name, XNNPACK's by its own). Writes ``benchmarks/results/head_step_<checkpoint name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hf_factor_embed.export.head import SHORTLIST
from hf_factor_embed.export.layers import ExportedFactors, ExportedLMHead
from hf_factor_embed.export.target import RUNTIMES
from hf_factor_embed.models.load import load_model

RESULTS = Path(__file__).parent / "results"
CALLS, PROFILED, SHOWN = 20, 5, 8


class Head(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--shortlist", type=int, default=SHORTLIST, help="tail tokens read whole a step")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "config.json").is_file():
        sys.exit(f"head_step.py: error: no checkpoint at {args.checkpoint}")
    command = "python benchmarks/head_step.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "calls": CALLS, "heads": {}}
    model, _ = load_model(args.checkpoint)
    layer, config = model.get_output_embeddings(), model.config.quantization_config
    width = layer.embedding_dim
    heads = {"dense fp32": None, "ours, fp32 matrices": True, "ours, integers dequantized each step": False}
    with tempfile.TemporaryDirectory() as scratch:
        for label, precomputed in heads.items():
            head = _head(layer, config, args.shortlist, precomputed)
            path = _lower(head, width, Path(scratch, "head.pte"))
            result["heads"][label] = _measure(path, width) | {"file_mb": path.stat().st_size / 1e6}
            print(label, json.dumps(result["heads"][label]), flush=True)
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"head_step_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _head(layer, config, shortlist: int, precomputed: bool | None) -> nn.Module:
    """The stored-factor head of the factorized ``layer`` as the export builds it (a file whose head reads a
    shortlist holds the tail's codes only, unless ``precomputed``); dense's ``nn.Linear`` where ``precomputed`` is
    None."""
    if precomputed is None:
        torch.manual_seed(0)
        return Head(nn.Linear(layer.embedding_dim, layer.num_embeddings, bias=False)).eval()
    runtime = RUNTIMES["executorch"] if precomputed else replace(RUNTIMES["executorch"], precomputed=False)
    factors = ExportedFactors(layer, config, "lm_head", shortlist=True, runtime=runtime)
    return Head(ExportedLMHead(layer, factors, shortlist=shortlist)).eval()


def _lower(module: nn.Module, width: int, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with torch.no_grad():
        program = torch.export.export(module, (torch.zeros(1, 1, width),))
    config = EdgeCompileConfig(_check_ir_validity=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], compile_config=config)
    path.write_bytes(lowered.to_executorch().buffer)
    return path


def _measure(path: Path, width: int) -> dict:
    """Median ms a call, and the slowest ops of an ETDump profile (median ms a call each)."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    hidden = torch.randn(1, 1, width, generator=torch.Generator().manual_seed(0))
    method = _load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    for _ in range(PROFILED):
        method.forward([hidden])
    dump = path.with_suffix(".etdp")
    method.write_etdump_result_to_file(str(dump))
    skipped = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute"}  # wrappers of the ops below
    events = [e for b in Inspector(etdump_path=str(dump)).event_blocks if b.name == "Execute" for e in b.events]
    timed = [(e.name, e.perf_data.raw) for e in events if e.perf_data is not None and e.name not in skipped]
    ops = sorted(((float(statistics.median(raw)), name) for name, raw in timed), reverse=True)
    method = _load_for_executorch(str(path))  # timed without the profiler
    seconds = []
    for _ in range(CALLS):
        started = time.perf_counter()
        method.forward([hidden])
        seconds.append(time.perf_counter() - started)
    return {"ms": statistics.median(seconds) * 1e3, "slowest_ops_ms": [[name, ms] for ms, name in ops[:SHOWN]]}


def render(name: str, result: dict) -> str:
    lines = [f"{name}: the head alone, one decode step, ExecuTorch (XNNPACK), this CPU"]
    for label, row in result["heads"].items():
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in row["slowest_ops_ms"][:4])
        lines.append(f"{label:<40}{row['ms']:>8.1f} ms  ({ops})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
