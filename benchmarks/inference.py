"""Inference speed: the LM head alone and greedy generation, dense against factorized (plain and banded).

    python benchmarks/speed.py --inference            # this file's main(), the factorization part is speed.py's

Random weights at real shapes (time does not depend on the values): SmolLM2's head (49152 x 576) and a head that
dominates its model (262144 x 640, Gemma-3-270M-like). Rank d/4 for the plain head; the banded head has the same
parameter count (30% of it in exact rows for random token ids, the rest a rank-0.7 r fit). Head time for one
token (decode), 16 and 512 tokens (prefill), medians after warm-up, in one process; greedy generation tokens/s
with the whole model (tied, 18 layers for the 262k shape, 30 for SmolLM2's), dense, plain and banded; resident
memory after ``from_pretrained`` of saved dense, float-factor and integer-factor checkpoints (each in a fresh
process: RSS after loading and the peak while loading, beyond the interpreter's own); and a torch.compile check
(the compiled factorized model gives the eager logits). Integer factors are read back into float at load, so
their head and generation time is the float factors'; only their load is measured apart. Writes
benchmarks/results/inference.json and a section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from quality import write_results_md  # noqa: E402

import hf_factor_embed as hfe  # noqa: E402
from hf_factor_embed.layers.factorized import FactorizedLMHead, head_layout  # noqa: E402

SHAPES = {"49152x576": (49152, 576, 30, 1536, 9, 3), "262144x640": (262144, 640, 18, 2048, 4, 1)}


def median_seconds(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heads(v: int, d: int, rank: int) -> dict[str, nn.Module]:
    g = torch.Generator().manual_seed(0)
    dense = nn.Linear(d, v, bias=False)
    plain = FactorizedLMHead(v, d, rank)
    band = int(0.3 * rank * (v + d) / d)
    banded = FactorizedLMHead(v, d, max(1, round(0.7 * rank)), dense_rows=band)
    with torch.no_grad():
        for module in (dense, plain, banded):
            for p in module.parameters():
                if p.dtype.is_floating_point:
                    p.copy_(torch.randn(p.shape, generator=g) / d**0.5)
        banded.dense_index.copy_(torch.randperm(v, generator=g)[:band])
    dense_column_major = nn.Linear(d, v, bias=False)
    with torch.no_grad():  # the same head with its weight stored column-major: how much of the gain is layout
        dense_column_major.weight.data = head_layout(dense.weight.data)
    return {"dense": dense, "dense, column-major": dense_column_major, "plain": plain, "banded": banded}


@torch.inference_mode()
def head_times(v: int, d: int, rank: int) -> list[dict]:
    rows = []
    modules = heads(v, d, rank)
    for tokens, reps in ((1, 200), (16, 50), (512, 10)):
        h = torch.randn(1, tokens, d)
        for name, module in modules.items():
            seconds = median_seconds(lambda m=module, h=h: m(h), reps)
            params = sum(p.numel() for p in module.parameters() if p.dtype.is_floating_point)
            rows.append(
                {
                    "shape": f"{v}x{d}",
                    "rank": rank,
                    "head": name,
                    "tokens": tokens,
                    "seconds": seconds,
                    "params": params,
                }
            )
    for row in rows:
        dense = next(r for r in rows if r["tokens"] == row["tokens"] and r["head"] == "dense")
        row["vs_dense"] = row["seconds"] / dense["seconds"]
        row["flop_ratio"] = row["params"] / dense["params"]
    return rows


def model(v: int, d: int, layers: int, inter: int, heads_: int, kv: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=v,
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads_,
        num_key_value_heads=kv,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def generation(shape: str, new_tokens: int, reps: int = 5) -> list[dict]:
    v, d, *rest = SHAPES[shape]
    rss = psutil.Process().memory_info().rss
    dense = model(v, d, *rest)
    dense_mb = (psutil.Process().memory_info().rss - rss) / 2**20
    prompt = torch.randint(0, v, (1, 16))
    rows = []
    calibration = torch.randint(0, v, (2048,), generator=torch.Generator().manual_seed(0))
    variants = {
        "dense": dense,
        "plain r=d/4": hfe.patch_model(copy.deepcopy(dense), rank=d // 4, method="svd"),
        "banded r=d/4": hfe.patch_model(copy.deepcopy(dense), rank=d // 4, calibration=calibration),
    }
    # Rounds over the variants, not one variant after another: this machine's speed drifts over minutes, and a
    # block per variant once put the faster model behind (0.83x, where interleaved rounds gave 1.21x).
    times = {name: [] for name in variants}
    for round_ in range(1 + reps):
        for name, m in variants.items():
            started = time.perf_counter()
            m.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - started)
    for name, m in variants.items():
        rows.append(
            {
                "shape": shape,
                "model": name,
                "tokens_per_s": new_tokens / statistics.median(times[name]),
                "rounds": reps,
                "params": m.num_parameters(),
                "dense_build_rss_mb": dense_mb,
            }
        )
    compiled_ok = compile_check(variants["plain r=d/4"], prompt)
    for row in rows:
        row["vs_dense"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        row["torch_compile_matches_eager"] = compiled_ok
    return rows


# safetensors are memory-mapped, so RSS right after from_pretrained counts only what loading touched: one
# 8-token forward pass touches every weight. VmHWM (the peak) belongs to the process's own memory map, unlike
# ru_maxrss, which Linux carries over from the parent across exec.
LOAD_CHILD = """
import sys
import psutil, torch
import hf_factor_embed  # noqa: F401  (what a serving process has through the autoload hook)
from transformers import AutoModelForCausalLM
base = psutil.Process().memory_info().rss
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
with torch.inference_mode():
    model(torch.arange(8)[None])
after = psutil.Process().memory_info().rss
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(after - base, peak - base)
"""


def load_memory(shape: str) -> list[dict]:
    """RSS after from_pretrained, and the peak while loading, for dense / float / int8 / int4-factor checkpoints."""
    import subprocess
    import tempfile

    v, d, *rest = SHAPES[shape]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense = model(v, d, *rest)
        variants = {"dense": "dense", "plain r=d/4, float": None, "plain r=d/4, int8": 8, "plain r=d/4, int4": 4}
        for name, bits in variants.items():
            folder = Path(tmp) / str(len(rows))
            m = dense if bits == "dense" else hfe.patch_model(copy.deepcopy(dense), rank=d // 4, bits=bits)
            m.save_pretrained(folder)
            del m
            out = subprocess.run(
                [sys.executable, "-c", LOAD_CHILD, str(folder)], capture_output=True, text=True, check=True
            ).stdout.split()
            after, peak = (int(x) / 2**20 for x in out[-2:])
            rows.append({"shape": shape, "checkpoint": name, "rss_after_forward_mb": after, "peak_mb": peak})
            print(rows[-1], flush=True)
    return rows


def compile_check(m, prompt) -> bool | str:
    try:
        compiled = torch.compile(m)
        return bool(torch.allclose(compiled(prompt).logits, m(prompt).logits, atol=1e-4, rtol=1e-4))
    except Exception as error:  # report, do not hide: a compile failure is a finding
        return f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--parts",
        nargs="*",
        default=["heads", "generation", "load"],
        choices=["heads", "generation", "load"],
        help="measure only these; the others are kept from the existing JSON (none: render it again)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inference.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    kept = json.loads(args.out.read_text()) if args.out.exists() else {}
    head_rows, gen_rows, load_rows = [], [], []
    for shape in args.shapes:
        v, d = SHAPES[shape][:2]
        head_rows += head_times(v, d, d // 4) if "heads" in args.parts else []
        gen_rows += generation(shape, args.new_tokens) if "generation" in args.parts else []
        load_rows += load_memory(shape) if "load" in args.parts else []
    head_rows = head_rows or kept.get("heads", [])
    gen_rows = gen_rows or kept.get("generation", [])
    load_rows = load_rows or kept.get("load_memory", [])
    command = ("python benchmarks/speed.py --inference " + " ".join(sys.argv[2:] if argv is None else argv)).strip()
    earlier = dict.fromkeys(("heads", "generation", "load"), kept["command"]) if "command" in kept else {}
    commands = {**earlier, **kept.get("commands", {}), **dict.fromkeys(args.parts, command)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"commands": commands, "heads": head_rows, "generation": gen_rows, "load_memory": load_rows}, indent=1
        )
    )
    by_command = {}
    for part, c in commands.items():
        by_command.setdefault(c, []).append(part)
    command_text = "; ".join(f"`{c}` ({', '.join(parts)})" for c, parts in by_command.items())
    text = render(command_text, head_rows, gen_rows, load_rows, torch.get_num_threads())
    print(text)
    write_results_md(text, "inference")


def render(command: str, head_rows: list[dict], gen_rows: list[dict], load_rows: list[dict], threads: int) -> str:
    lines = [
        f"Commands: {command} (CPU, {threads} threads, fp32, random weights at these shapes).",
        "",
        "| V x d | head (rank) | params / dense | 1 token ms (x dense) | 16 tokens ms (x dense) "
        "| 512 tokens ms (x dense) |",
        "|---|---|---|---|---|---|",
    ]
    for shape in dict.fromkeys(r["shape"] for r in head_rows):
        for head in dict.fromkeys(r["head"] for r in head_rows if r["shape"] == shape):
            one, few, many = (
                next(r for r in head_rows if r["shape"] == shape and r["head"] == head and r["tokens"] == t)
                for t in (1, 16, 512)
            )
            lines.append(
                f"| {shape} | {head} | {one['flop_ratio']:.3f} | {1e3 * one['seconds']:.3f} "
                f"({one['vs_dense']:.2f}x) | {1e3 * few['seconds']:.2f} ({few['vs_dense']:.2f}x) "
                f"| {1e3 * many['seconds']:.1f} ({many['vs_dense']:.2f}x) |"
            )
    lines += [
        "",
        "| V x d | model | parameters | greedy tokens/s (x dense) | torch.compile = eager |",
        "|---|---|---|---|---|",
    ]
    for r in gen_rows:
        lines.append(
            f"| {r['shape']} | {r['model']} | {r['params']:,} | {r['tokens_per_s']:.1f} ({r['vs_dense']:.2f}x) "
            f"| {r['torch_compile_matches_eager']} |"
        )
    lines += [
        "",
        "| V x d | checkpoint (fresh process) | RSS after from_pretrained + one forward MiB | peak MiB |",
        "|---|---|---|---|",
    ]
    for r in load_rows:
        lines.append(f"| {r['shape']} | {r['checkpoint']} | {r['rss_after_forward_mb']:.0f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
