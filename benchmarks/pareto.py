"""Embedding bytes against perplexity for SmolLM2: quantization alone, factorization alone, and both.

    python benchmarks/pareto.py                       # ranks 64 128 192 256 384; float, int8 and int4 factors;
                                                      # ranks 128 256 again after cheap recovery

Calibration and held-back text: Python's language reference (``pydoc_data.topics``; its first --eval-tokens
tokens evaluate, the --calibration-tokens after them calibrate). Text of another kind, never calibrated on: the
license texts under /usr/share/common-licenses. Every point is measured in this run with the same
round-to-nearest symmetric quantizer with fp16 scales, the package's own storage format
(``hf_factor_embed.quantizer.rounding``, what ``patch_model(bits=...)`` saves): per row for 8 bits, groups of 32 for 4
bits,
groups of 16 for 6 bits (a stand-in for llama.cpp's Q6_K, 6.56 bits per weight; 6-bit values are counted at 6
bits, as a packed format would store them). Factorized points use the default
method
(``banded``), rounded by the package's own path
(``hf_factor_embed.quantizer.storage.round_factors``: A's columns balanced
against B's rows, then A at ``bits``, B and the band's rows at ``band_bits``). ``int4 g32`` is the package's
default for 4 bits (B and band in int8), ``int4 g32, all`` puts them in int4 too; ``int4 g32, B refit`` refits
the small B (r x d, kept in fp32) in closed form to the rounded A (least squares over the rows outside the
band). ``factorized + cheap`` points first run the package's cheap recovery (``hf_factor_embed.recovery``: the
factors refitted to the dense model's head inputs on the calibration text, no backpropagation through the
blocks), then quantize. ``factorized, band 95%`` points spend 95% of a rank-r budget on exact rows (int8 or
int4 throughout): most of the vocabulary is stored like int4 g32, the least used tokens as low-rank codes. Bytes
count every stored tensor (the band's int64 index included) against the fp32 embedding (tied: one matrix).
Writes benchmarks/results/pareto.json, pareto.png and a section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import load_smollm2, write_results_md  # noqa: E402

import hf_factor_embed as hfe  # noqa: E402
from hf_factor_embed.calibration.data import source_text  # noqa: E402
from hf_factor_embed.factorize.banded import BandedMethod  # noqa: E402
from hf_factor_embed.measure.perplexity import perplexity  # noqa: E402
from hf_factor_embed.quantizer.rounding import dequantize, quantize  # noqa: E402
from hf_factor_embed.quantizer.storage import quantized_state_dict, round_factors  # noqa: E402
from hf_factor_embed.recovery import CheapRefitConfig, cheap_refit, collect_teacher_signals  # noqa: E402

TRAIN, OTHER = "pydoc", "licenses"
#: name -> (bits, group size; None = per row)
PRECISIONS = {"int8": (8, None), "int6 g16": (6, 16), "int4 g32": (4, 32)}


def quantized(w: torch.Tensor, bits: int | None, group: int | None) -> tuple[torch.Tensor, int]:
    """(the matrix as stored and read back, its bytes), with the package's own storage format."""
    if bits is None:
        return w, w.numel() * 4
    q, scale = quantize(w, bits, group)  # 6 bits: int8 storage here, counted at 6 bits below
    values = w.numel() * bits // 8 if bits not in (8, 4) else q.numel() * q.element_size()
    return dequantize(q, scale, bits, w.shape[1], group), values + scale.numel() * 2


#: factorized variants: name -> (bits of A, group size of A, bits of B and the band's rows); None: float
FACTOR_PRECISIONS = {
    "float": None,
    "int8": (8, None, 8),
    "int4 g32": (4, 32, 8),
    "int4 g32, all": (4, 32, 4),
}


@torch.no_grad()
def quantize_factors(model, precision: tuple[int, int | None, int] | None, refit_b: bool = False) -> int:
    """Round the factors in place the way ``patch_model(bits=..., band_bits=...)`` does; returns their bytes."""
    layer = model.get_input_embeddings()
    index_bytes = 0 if layer.dense_index is None else layer.dense_index.numel() * 8
    if precision is None:
        return index_bytes + 4 * sum(t.numel() for t in (layer.weight, layer.basis, layer.dense_rows) if t is not None)
    config = copy.copy(model.config.quantization_config)
    config.bits, config.group_size, config.band_bits = precision
    float_product = (layer.weight @ layer.basis).detach() if refit_b else None
    round_factors(model, config)
    state = quantized_state_dict(model, config)
    prefix = next(k for k in state if k.endswith("weight_q")).rsplit(".", 1)[0]  # the embedding (tied: the owner)
    stored = {k: v for k, v in state.items() if k.startswith(prefix + ".") and k.endswith(("_q", "_scale"))}
    if refit_b:
        # B = argmin || A_float B_float - A_q B || over the rows outside the band, kept in fp32
        keep = torch.ones(layer.weight.shape[0], dtype=torch.bool)
        if layer.dense_index is not None:
            keep[layer.dense_index] = False
        target = float_product[keep].double()
        aq = layer.weight.data[keep].double()
        layer.basis.copy_(torch.linalg.solve(aq.T @ aq, aq.T @ target).float())
        stored = {k: v for k, v in stored.items() if ".basis_" not in k}
        index_bytes += layer.basis.numel() * 4
    return index_bytes + sum(v.numel() * v.element_size() for v in stored.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="*", default=[64, 128, 192, 256, 384])
    parser.add_argument(
        "--recover-ranks", type=int, nargs="*", default=[128, 256], help="ranks measured again after cheap recovery"
    )
    parser.add_argument(
        "--wide-band",
        nargs="*",
        default=["448:0.95", "512:0.95"],
        help="rank:band_share points with most of the budget in exact rows (int4): the tail alone is low-rank",
    )
    parser.add_argument(
        "--load-times-only", action="store_true", help="re-measure the from_pretrained timings into the JSON"
    )
    parser.add_argument("--no-load-times", action="store_true", help="skip the from_pretrained timings")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pareto.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense, tok = load_smollm2()
    ids = {name: tok(source_text(name), return_tensors="pt").input_ids[0] for name in (TRAIN, OTHER)}
    evals = {name: t[: args.eval_tokens] for name, t in ids.items()}
    calibration = ids[TRAIN][args.eval_tokens :][: args.calibration_tokens]
    if args.load_times_only:  # the quality rows stay as the last full run wrote them
        saved = json.loads(args.out.read_text())
        saved["load"] = load_times(dense, calibration, rank=max(args.ranks or [256]))
        saved["load_command"] = "python benchmarks/pareto.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps(saved, indent=1))
        text = render(saved["command"], saved["rows"]) + "\n\n" + render_load(saved["load"], saved["load_command"])
        print(text)
        write_results_md(text, "pareto")
        return
    weight = dense.get_input_embeddings().weight
    fp32_bytes = weight.numel() * 4
    rows = []

    def add(kind, name, model, stored_bytes, rank=None, **extra):
        ppl = {k: perplexity(model, e) for k, e in evals.items()}
        rows.append(
            {
                "kind": kind,
                "name": name,
                "rank": rank,
                "bytes": stored_bytes,
                "share_of_fp32": stored_bytes / fp32_bytes,
                **{f"ppl_{k}": v for k, v in ppl.items()},
                **extra,
            }
        )
        print(rows[-1], flush=True)

    original = weight.detach().clone()
    add("dense", "fp32", dense, fp32_bytes)
    with torch.no_grad():
        weight.copy_(original.bfloat16().float())
    add("quantization", "bf16", dense, fp32_bytes // 2)
    for name, (bits, group) in PRECISIONS.items():
        deq, stored = quantized(original, bits, group)
        with torch.no_grad():
            weight.copy_(deq)
        add("quantization", name, dense, stored)
    with torch.no_grad():
        weight.copy_(original)

    for rank in args.ranks:
        start = hfe.patch_model(copy.deepcopy(dense), rank=rank, calibration=calibration)
        variants = {
            **{name: (p, False) for name, p in FACTOR_PRECISIONS.items()},
            "int4 g32, B refit": (FACTOR_PRECISIONS["int4 g32"], True),
        }
        for name, (precision, refit) in variants.items():
            model = copy.deepcopy(start)
            stored = quantize_factors(model, precision, refit)
            add("factorized", name, model, stored, rank)
            del model
        del start

    for spec in args.wide_band:
        rank, share = int(spec.split(":")[0]), float(spec.split(":")[1])
        start = hfe.patch_model(copy.deepcopy(dense), rank=rank, calibration=calibration, method=BandedMethod(share))
        for name in ("int8", "int4 g32, all"):
            model = copy.deepcopy(start)
            stored = quantize_factors(model, FACTOR_PRECISIONS[name])
            k = model.get_input_embeddings().num_dense_rows
            add(f"factorized, band {share:.0%}", name, model, stored, rank, band_rows=k)
            del model
        del start
    recovered_points(dense, calibration, args.recover_ranks, add)
    rows_load = [] if args.no_load_times else load_times(dense, calibration, rank=max(args.ranks or [256]))
    command = "python benchmarks/pareto.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command.strip(), "rows": rows, "load": rows_load}, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    text = render(command.strip(), rows) + ("\n\n" + render_load(rows_load, command.strip()) if rows_load else "")
    print(text)
    write_results_md(text, "pareto")


def recovered_points(dense, calibration: torch.Tensor, ranks: list[int], add) -> None:
    """Factorize, run cheap recovery on the calibration text, then store the factors as float, int8 and int4."""
    import time

    if not ranks:
        return
    signals = collect_teacher_signals(dense, calibration, progress=False)
    for rank in ranks:
        student = hfe.patch_model(copy.deepcopy(dense), rank=rank, calibration=calibration)
        started = time.perf_counter()
        cheap_refit(student, signals, CheapRefitConfig())
        seconds = time.perf_counter() - started
        for name in ("float", "int8", "int4 g32"):
            model = copy.deepcopy(student)
            stored = quantize_factors(model, FACTOR_PRECISIONS[name])
            add("factorized + cheap", name, model, stored, rank, refit_seconds=seconds)
            del model
        del student


def load_times(dense, calibration, rank: int, reps: int = 3) -> list[dict]:
    """from_pretrained time (median of ``reps``, warm file cache) of the dense fp32 checkpoint and of factorized
    ones with float, 8-bit and 4-bit factors, all saved here."""
    import statistics
    import tempfile
    import time

    from transformers import AutoModelForCausalLM

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"dense fp32": None, "factorized float": "float", "factorized int8": 8, "factorized int4": 4}
        for name, bits in variants.items():
            folder = Path(tmp) / name.replace(" ", "_")
            if bits is None:
                dense.save_pretrained(folder)
            else:
                model = hfe.patch_model(
                    copy.deepcopy(dense), rank=rank, calibration=calibration, bits=None if bits == "float" else bits
                )
                model.save_pretrained(folder)
                del model
            AutoModelForCausalLM.from_pretrained(folder)  # warm the file cache
            times = []
            for _ in range(reps):
                started = time.perf_counter()
                AutoModelForCausalLM.from_pretrained(folder)
                times.append(time.perf_counter() - started)
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            out.append(
                {
                    "checkpoint": name,
                    "rank": None if bits is None else rank,
                    "seconds": statistics.median(times),
                    "file_bytes": size,
                }
            )
            print(out[-1], flush=True)
    return out


def render_load(rows: list[dict], command: str) -> str:
    lines = [
        f"Loading (`{command}`; `from_pretrained`, median of 3, warm file cache; whole SmolLM2 checkpoint files):",
        "",
        "| checkpoint | rank | file bytes | load s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['rank'] or ''} | {r['file_bytes']:,} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def render(command: str, rows: list[dict]) -> str:
    dense = rows[0]
    int4 = next(r for r in rows if r["name"] == "int4 g32" and r["kind"] == "quantization")
    lines = [
        f"Command: `{command}`. SmolLM2-135M tied 49152 x 576 embedding; perplexity ratio to dense in this run; "
        f"`{TRAIN}` held back (calibration text's kind), `{OTHER}` never calibrated on. *dominates int4 g32*: "
        "fewer bytes and perplexity no higher on both texts. Plot: `benchmarks/results/pareto.png`.",
        "",
        f"| kind | precision | rank | bytes (share of fp32) | {TRAIN} | {OTHER} | dominates int4 g32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[f'ppl_{s}']:.2f} ({r[f'ppl_{s}'] / dense[f'ppl_{s}']:.3f}x)" for s in (TRAIN, OTHER)]
        dominates = (
            r["kind"].startswith("factorized")
            and r["bytes"] < int4["bytes"]
            and all(r[f"ppl_{s}"] <= int4[f"ppl_{s}"] for s in (TRAIN, OTHER))
        )
        lines.append(
            f"| {r['kind']} | {r['name']} | {r['rank'] or ''} | {r['bytes']:,} ({r['share_of_fp32']:.1%}) | "
            f"{cells[0]} | {cells[1]} | {'yes' if dominates else ''} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, source in zip(axes, (TRAIN, OTHER), strict=True):
        for kind, marker in (("quantization", "s"), ("dense", "*")):
            pts = [r for r in rows if r["kind"] == kind]
            ax.scatter(
                [100 * r["share_of_fp32"] for r in pts],
                [r[f"ppl_{source}"] for r in pts],
                marker=marker,
                s=60,
                label=kind,
                zorder=3,
            )
            for r in pts:
                ax.annotate(r["name"], (100 * r["share_of_fp32"], r[f"ppl_{source}"]), fontsize=7)
        wide = sorted({r["kind"] for r in rows if r["kind"].startswith("factorized, band")})
        for kind, name in (
            [("factorized", n) for n in (*FACTOR_PRECISIONS, "int4 g32, B refit")]
            + [("factorized + cheap", n) for n in ("int8", "int4 g32")]
            + [(w, "int4 g32, all") for w in wide]
        ):
            pts = sorted((r for r in rows if r["kind"] == kind and r["name"] == name), key=lambda r: r["bytes"])
            ax.plot(
                [100 * r["share_of_fp32"] for r in pts],
                [r[f"ppl_{source}"] for r in pts],
                {"factorized": "o-", "factorized + cheap": "D--"}.get(kind, "^:"),
                ms=4,
                label=f"{kind}, {name}",
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="embedding bytes, % of fp32",
            ylabel="perplexity",
            title=f"{source} ({'held back' if source == TRAIN else 'other kind'})",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
