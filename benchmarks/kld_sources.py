"""Where a checkpoint's KL divergence from dense comes from, on text as the model sees it:

    python benchmarks/kld_sources.py --checkpoint out/gemma3-en --dense bundled:gemma3        # ~4 min

For each text (``<bos>`` first, one window of 256 tokens), teacher-forced, both models' next-token distributions
``p`` (dense) and ``q`` (the checkpoint) at every position, and the mean KL divergence ``sum_v p_v log(p_v / q_v)``
split four ways:

1. **by vocabulary**: the terms of band tokens (exact rows) and of tail tokens (coded rows) summed apart; with the
   probability mass each model puts on the tail (a coded row that wins mass it should not shows as ``q`` above
   ``p`` there);
2. **by position**: positions where dense's top token is a band token against those where it is a tail token;
3. **by the hidden state's outlier coordinates**: positions in the top tenth by the largest magnitude of the final
   hidden state's exact (outlier) columns, against the rest;
4. **by how concentrated the divergence is**: the share of the total carried by the worst 1% and 10% of positions.

Texts: served English held back (the first 20% of pydoc_data.topics), English never calibrated on
(/usr/share/common-licenses), a language not served (German gettext messages). Writes
``benchmarks/results/kld_sources_<checkpoint name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from hf_factor_embed.calibration.model_text import bos_prefix
from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.models.load import load_model

sys.path.insert(0, str(Path(__file__).parent))
from shortlist import head_input_and_logits  # noqa: E402  (the shortlist benchmark's hook on the head's input)

RESULTS = Path(__file__).parent / "results"
TEXTS = {"pydoc (served, held back)": ("pydoc", True), "licenses (never seen)": ("licenses", False)}
TEXTS |= {"lang:de (not served)": ("lang:de", False)}
WINDOW = 256


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", required=True, help="its dense model: a folder or bundled:NAME")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.checkpoint)
    dense, _ = load_model(args.dense)
    head = model.get_output_embeddings()
    band = torch.zeros(head.num_embeddings, dtype=torch.bool)
    if head.dense_index is not None:
        band[head.dense_index] = True
    columns = head.tail_columns if head.has_tail_codes else torch.zeros(0, dtype=torch.long)
    command = "python benchmarks/kld_sources.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "band_rows": int(band.sum()), "texts": {}}
    bos = bos_prefix(tokenizer)
    for label, (name, held_back) in TEXTS.items():
        source = load_source(name)
        text = source.split(0.2)[1] if held_back else source.text
        ids = ([bos] if bos is not None else []) + tokenizer(text[:20000], add_special_tokens=False).input_ids
        ids = torch.tensor([ids[:WINDOW]])
        hidden, logits = head_input_and_logits(model, ids)
        with torch.no_grad():
            reference = dense(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        row = _split(reference, logits[0, :-1].float().log_softmax(-1), band, hidden[0, :-1], columns)
        result["texts"][label] = row
        print(label, json.dumps(row), flush=True)
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"kld_sources_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _split(p_log: torch.Tensor, q_log: torch.Tensor, band: torch.Tensor, hidden, columns) -> dict:
    """The mean KL divergence over positions and its parts (see the module's docstring)."""
    p = p_log.exp()
    terms = p * (p_log - q_log)  # (n, V): summed over V, each position's KL divergence
    per_position = terms.sum(-1).clamp_min(0)
    top_in_band = band[p_log.argmax(-1)]
    outlier = hidden.index_select(-1, columns).abs().amax(-1) if columns.numel() else hidden.abs().amax(-1)
    loud = outlier >= outlier.quantile(0.9)
    ordered = per_position.sort(descending=True).values
    total = float(per_position.mean())
    n = per_position.numel()
    return {
        "positions": n,
        "kld": total,
        "band_terms": float(terms[:, band].sum(-1).mean()),
        "tail_terms": float(terms[:, ~band].sum(-1).mean()),
        "tail_mass_dense": float(p[:, ~band].sum(-1).mean()),
        "tail_mass_ours": float(q_log[:, ~band].exp().sum(-1).mean()),
        "top_in_band_share": float(top_in_band.float().mean()),
        "kld_top_in_band": float(per_position[top_in_band].mean()) if top_in_band.any() else None,
        "kld_top_in_tail": float(per_position[~top_in_band].mean()) if (~top_in_band).any() else None,
        "kld_outlier_tenth": float(per_position[loud].mean()),
        "kld_other_positions": float(per_position[~loud].mean()),
        "share_worst_1pct": float(ordered[: max(1, n // 100)].sum() / ordered.sum()),
        "share_worst_10pct": float(ordered[: max(1, n // 10)].sum() / ordered.sum()),
    }


def render(name: str, result: dict) -> str:
    def f(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        f"{name}: mean KL divergence from dense and its parts (band {result['band_rows']:,} rows)",
        f"{'text':<27}{'KLD':>8}{'band':>8}{'tail':>8}{'tail p/q':>14}{'top band':>10}{'KLD|band':>10}"
        f"{'KLD|tail':>10}{'outlier':>9}{'other':>8}{'worst 1%':>10}{'10%':>6}",
    ]
    for label, r in result["texts"].items():
        lines.append(
            f"{label:<27}{r['kld']:>8.4f}{r['band_terms']:>8.4f}{r['tail_terms']:>8.4f}"
            f"{r['tail_mass_dense']:>7.3f}/{r['tail_mass_ours']:.3f}{r['top_in_band_share']:>10.1%}"
            f"{f(r['kld_top_in_band']):>10}{f(r['kld_top_in_tail']):>10}{r['kld_outlier_tenth']:>9.4f}"
            f"{r['kld_other_positions']:>8.4f}{r['share_worst_1pct']:>10.1%}{r['share_worst_10pct']:>6.0%}"
        )
    lines.append(
        "band / tail: the KL divergence's terms summed over band / tail tokens; tail p/q: probability mass on the "
        "tail, dense / ours; KLD|band, KLD|tail: at positions where dense's top token is a band / tail token; "
        "outlier / other: positions in the top tenth by the exact columns' largest magnitude / the rest"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
