"""Where the perplexity lost by factorizing SmolLM2 comes from, on text like and unlike the calibration text.

    python benchmarks/loss_breakdown.py            # ~10 min on the 2-core CPU machine

The default method (``banded``) calibrated on --calibrate-on (default ``pydoc``, --calibration-tokens tokens after
each source's evaluation slice, as in quality.py), at each rank, evaluated on the first --eval-tokens tokens of
every source. For each evaluation text:

* the factorized matrix on the input side only (head dense), on the head only (input dense), and on both;
* the extra loss per position (factorized minus dense next-token NLL), split by whether the *target* token has
  an exact row in the band, by whether the *input* token has one, and by how frequent the target is in the
  evaluation text itself (its 50 most frequent tokens, the next 450, the rest);
* the head fitted under the hidden-state metric of the evaluation text itself (an oracle no user has), to
  measure how much of the loss is the metric's dependence on the kind of text.

Writes benchmarks/results/loss_breakdown.json and a table between markers in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from quality import load_smollm2, write_results_md
from torch import nn

from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.data import TEXT_SOURCES, source_text
from hf_factor_embed.calibration.stats import CalibrationStats
from hf_factor_embed.factorize import FactorizationTask, get_method


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, window: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL per predicted position, input ids, target ids), all flat, over non-overlapping windows."""
    n = ids.numel() // window
    windows = ids[: n * window].view(n, window)
    losses = []
    for batch in windows.split(4):
        logits = model(input_ids=batch).logits[:, :-1].float()
        losses.append(nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none"))
    return torch.cat(losses).reshape(-1), windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)


def set_matrices(model, w_input: torch.Tensor, w_head: torch.Tensor) -> None:
    """Untied copies on each side (for the one-side-only measurements)."""
    model.get_input_embeddings().weight = nn.Parameter(w_input.clone())
    model.get_output_embeddings().weight = nn.Parameter(w_head.clone())


def breakdown(model, w, factors, evals, dense_nll) -> dict:
    approx = factors.dense(w)
    in_band = torch.zeros(w.shape[0], dtype=torch.bool)
    in_band[factors.dense_index] = True
    out = {}
    for name, ids in evals.items():
        row = {}
        for side, (wi, wh) in {"input only": (approx, w), "head only": (w, approx), "both": (approx, approx)}.items():
            set_matrices(model, wi, wh)
            nll, inputs, targets = token_nll(model, ids)
            row[side] = math.exp(float(nll.mean()))
        extra = nll - dense_nll[name]
        total = float(extra.sum())
        counts = torch.bincount(targets, minlength=w.shape[0])
        rank_of = torch.empty_like(counts)
        rank_of[torch.argsort(counts, descending=True)] = torch.arange(counts.numel())
        groups = {
            "target in band": in_band[targets],
            "target outside band": ~in_band[targets],
            "input outside band": ~in_band[inputs],
            "target among the text's top 50": rank_of[targets] < 50,
            "target ranked 50-499 in the text": (rank_of[targets] >= 50) & (rank_of[targets] < 500),
            "target ranked >= 500 in the text": rank_of[targets] >= 500,
        }
        row["groups"] = {
            g: {"positions": float(mask.float().mean()), "mean_extra_nll": float(extra[mask].mean())}
            | {"share_of_extra_nll": float(extra[mask].sum()) / total if total else 0.0}
            for g, mask in groups.items()
        }
        out[name] = row
    set_matrices(model, w, w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibrate-on", default="pydoc", choices=list(TEXT_SOURCES))
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--calibration-tokens", type=int, default=16384)
    parser.add_argument("--ranks", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loss_breakdown.json")
    args = parser.parse_args()
    model, tok = load_smollm2()
    ids = {name: tok(source_text(name), return_tensors="pt").input_ids[0] for name in TEXT_SOURCES}
    evals = {name: t[: args.eval_tokens] for name, t in ids.items()}
    calib = {name: t[args.eval_tokens : args.eval_tokens + args.calibration_tokens] for name, t in ids.items()}
    stats = collect_stats(model, calib[args.calibrate_on], progress=False)
    w = model.get_input_embeddings().weight.detach().clone()
    dense_nll = {name: token_nll(model, e)[0] for name, e in evals.items()}
    method = get_method("banded")
    own_metric = {  # the head's metric from each evaluation text's own source (oracle), all else unchanged
        name: collect_stats(model, calib[name], statistics=["hidden_cov"], progress=False).hidden_cov for name in evals
    }
    result = {"command": " ".join(["python", *sys.argv]), "calibrated_on": args.calibrate_on}
    result["dense"] = {name: math.exp(float(n.mean())) for name, n in dense_nll.items()}
    for rank in args.ranks:
        factors = method.factorize(FactorizationTask(w, rank, ("input", "output"), stats))
        entry = breakdown(model, w, factors, evals, dense_nll)
        for name in evals:
            oracle = CalibrationStats(stats.token_counts, own_metric[name], stats.expected_probs, stats.num_tokens)
            matrix = method.factorize(FactorizationTask(w, rank, ("input", "output"), oracle)).dense(w)
            set_matrices(model, matrix, matrix)
            entry[name]["both, oracle metric"] = math.exp(float(token_nll(model, evals[name])[0].mean()))
        set_matrices(model, w, w)
        result[f"rank {rank}"] = entry
        print(json.dumps(entry, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    write_results_md(render(result, args.ranks), "breakdown")


def render(result: dict, ranks) -> str:
    dense = result["dense"]
    lines = [
        f"Measured with\n\n    {result['command']}\n\nDefault method calibrated on {result['calibrated_on']}; "
        "perplexity (ratio to dense) with the factorized matrix on one side only, on both, and on both with the "
        "head's metric taken from the evaluation text itself (an oracle):\n",
        "| rank | evaluated on | dense | input only | head only | both | both, oracle metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank in ranks:
        for name, row in result[f"rank {rank}"].items():
            cells = [f"{row[k]:.2f} ({row[k] / dense[name]:.2f}x)" for k in ("input only", "head only", "both")]
            cells.append(f"{row['both, oracle metric']:.2f} ({row['both, oracle metric'] / dense[name]:.2f}x)")
            lines.append(f"| {rank} | {name} | {dense[name]:.2f} | {' | '.join(cells)} |")
    lines += [
        "\nExtra next-token loss (nats, factorized minus dense, both sides factorized) by kind of position: share "
        "of positions / mean extra loss / share of the total extra loss:\n",
        "| rank | evaluated on | " + " | ".join(next(iter(result[f"rank {ranks[0]}"].values()))["groups"]) + " |",
    ]
    lines.append("|" + "---|" * (lines[-1].count("|") - 1))
    for rank in ranks:
        for name, row in result[f"rank {rank}"].items():
            cells = [
                f"{g['positions']:.0%} / {g['mean_extra_nll']:.2f} / {g['share_of_extra_nll']:.0%}"
                for g in row["groups"].values()
            ]
            lines.append(f"| {rank} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
