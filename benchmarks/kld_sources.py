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

``--offset`` (~5 min more) measures one correction at equal bytes: a coded row ``w`` stands for dense's ``w + e``, so
its logit misses ``h . e``; over the head's inputs that term has second moment ``e^T S e`` (``S = E[h h^T]``), and a
log-normal term's expected ``exp`` is ``exp(variance / 2)``. Adding ``alpha * e^T S e / 2`` to each tail token's
logit (one number a token, ``S`` from 2,048 positions of the served sources' calibration parts: pydoc and
changelogs) gives the coded tail back the probability mass dense puts there. The table: mean KL divergence,
same-top and the tail's mass for ``alpha`` in 0, 0.5, 1, 1.5, on the texts above and five more languages.
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
OFFSET_LANGUAGES = ("ru", "zh_CN", "ja", "ar", "pl")
ALPHAS = (0.0, 0.5, 1.0, 1.5)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", required=True, help="its dense model: a folder or bundled:NAME")
    parser.add_argument("--offset", action="store_true", help="also measure the lost-variance logit offset")
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
    for label, (name, held_back) in TEXTS.items():
        source = load_source(name)
        ids = _window(tokenizer, source.split(0.2)[1] if held_back else source.text)
        hidden, logits = head_input_and_logits(model, ids)
        with torch.no_grad():
            reference = dense(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        row = _split(reference, logits[0, :-1].float().log_softmax(-1), band, hidden[0, :-1], columns)
        result["texts"][label] = row
        print(label, json.dumps(row), flush=True)
    print(render(args.checkpoint.name, result))
    if args.offset:
        result["offset"] = _offset_table(model, dense, tokenizer, band)
        print(render_offset(result["offset"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"kld_sources_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _window(tokenizer, text: str, length: int = WINDOW) -> torch.Tensor:
    bos = bos_prefix(tokenizer)
    ids = ([bos] if bos is not None else []) + tokenizer(text[:40000], add_special_tokens=False).input_ids
    return torch.tensor([ids[:length]])


def _offset_table(model, dense, tokenizer, band: torch.Tensor) -> dict:
    """KL divergence, same-top and tail mass with ``alpha * e^T S e / 2`` added to the tail's logits (see --offset)."""
    with torch.no_grad():
        dense_rows = dense.get_output_embeddings().weight.float()
        error = dense_rows - model.get_output_embeddings().dense_weight().float()
    hidden = []
    for name in ("pydoc", "changelogs"):
        calibration = load_source(name).split(0.2)[0]
        for start in (0, len(calibration) // 2):
            hidden.append(head_input_and_logits(model, _window(tokenizer, calibration[start:], 512))[0][0].float())
    states = torch.cat(hidden)
    second_moment = states.T @ states / states.shape[0]
    offset = 0.5 * ((error @ second_moment) * error).sum(-1).masked_fill(band, 0.0)
    texts = {label: spec for label, spec in TEXTS.items()}
    texts |= {f"lang:{code} (not served)": (f"lang:{code}", False) for code in OFFSET_LANGUAGES}
    table = {"offset_mean": float(offset[~band].mean()), "offset_max": float(offset.max()), "texts": {}}
    table |= {  # how large the coded rows' error is against the rows themselves
        "tail_error_norm": float(error[~band].norm(dim=-1).mean()),
        "tail_row_norm": float(dense_rows[~band].norm(dim=-1).mean()),
    }
    for label, (name, held_back) in texts.items():
        source = load_source(name)
        ids = _window(tokenizer, source.split(0.2)[1] if held_back else source.text)
        logits = head_input_and_logits(model, ids)[1][0, :-1].float()
        with torch.no_grad():
            p_log = dense(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        by_alpha = {"tail_mass_dense": float(p_log[:, ~band].exp().sum(-1).mean())}
        for alpha in ALPHAS:
            q_log = (logits + alpha * offset).log_softmax(-1)
            by_alpha[str(alpha)] = {
                "kld": float((p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0).mean()),
                "same_top": float((p_log.argmax(-1) == q_log.argmax(-1)).float().mean()),
                "tail_mass": float(q_log[:, ~band].exp().sum(-1).mean()),
            }
        table["texts"][label] = by_alpha
        print(label, json.dumps(by_alpha), flush=True)
    return table


def render_offset(table: dict) -> str:
    lines = [
        f"lost-variance offset (tail tokens: mean {table['offset_mean']:.3f}, max {table['offset_max']:.2f} nats; "
        f"their rows' error {table['tail_error_norm']:.3f} against a norm of {table['tail_row_norm']:.3f}): "
        "KLD / same-top / tail mass (dense's in brackets) by alpha",
        f"{'text':<27}" + "".join(f"{'alpha ' + str(a):>24}" for a in ALPHAS),
    ]
    for label, rows in table["texts"].items():
        cells = [f"{r['kld']:.4f} {r['same_top']:6.1%} {r['tail_mass']:.3f}" for r in (rows[str(a)] for a in ALPHAS)]
        lines.append(f"{label:<27}" + "".join(f"{c:>24}" for c in cells) + f"  ({rows['tail_mass_dense']:.3f})")
    return "\n".join(lines)


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
