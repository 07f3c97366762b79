"""Two questions about measuring and decoding the codes head, on a real checkpoint and its dense model:

    python benchmarks/fidelity_reference.py --checkpoint out/gemma3-en --dense bundled:gemma3     # ~3 min

1. How far below the full KL divergence does a reference of dense's top-k tokens (the rest of the mass as one
   outcome) read? (Why ``compress`` keeps dense's hidden states and head instead: exact.)
2. Does the head's low-rank part (A B h, the coarse scores every token has) shortlist the token the full head
   picks? The share of positions whose top token is in the band or among the k best tail tokens by the low-rank
   part alone: a shortlist head is exact only where it is 100%.

Texts: the held-back fifth of pydoc_data.topics, /usr/share/common-licenses, German gettext messages; 511 tokens
each after ``<bos>``, one window. Writes ``benchmarks/results/fidelity_reference_<checkpoint name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from hf_factor_embed.calibration.sources import load_source
from hf_factor_embed.measure.fidelity import FidelityMeter, fidelity
from hf_factor_embed.measure.perplexity import perplexity
from hf_factor_embed.models.load import load_model

RESULTS = Path(__file__).parent / "results"
TEXTS = {"pydoc (held back)": ("pydoc", True), "licenses": ("licenses", False), "lang:de": ("lang:de", False)}
TOP_KS = (64, 256, 1024, 4096)
SHORTLISTS = (256, 1024, 4096)
WINDOW = 512


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dense", required=True)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.checkpoint)
    dense, _ = load_model(args.dense)
    bos = tokenizer.bos_token_id
    command = "python benchmarks/fidelity_reference.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "texts": {}}
    for label, (name, held_back) in TEXTS.items():
        source = load_source(name)
        text = source.split(0.2)[1] if held_back else source.text
        ids = tokenizer(text[:8000], add_special_tokens=False, return_tensors="pt").input_ids[0][: WINDOW - 1]
        row = {"full_kld": fidelity(dense, model, ids, window=WINDOW, bos_id=bos).mean_kld, "top_k_kld": {}}
        for k in TOP_KS:
            record = FidelityMeter(k=k)
            perplexity(dense, ids, window=WINDOW, bos_id=bos, observe=record)
            meter = FidelityMeter(record.recorded())
            perplexity(model, ids, window=WINDOW, bos_id=bos, observe=meter)
            row["top_k_kld"][k] = meter.fidelity().mean_kld
        row["shortlist"] = _shortlist(model, torch.cat([torch.tensor([bos]), ids])[None])
        result["texts"][label] = row
    print(render(result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fidelity_reference_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


@torch.no_grad()
def _shortlist(model, ids: torch.Tensor) -> dict:
    """Share of positions whose full-head top token is a band token or among the k best by the low-rank part."""
    head, kept = model.get_output_embeddings(), []
    hook = head.register_forward_hook(lambda module, args, output: kept.append(args[0][0]))
    full = model(input_ids=ids).logits[0]
    hook.remove()
    coarse = (kept[0] @ head.basis.T) @ head.weight.T
    band = torch.zeros(full.shape[-1], dtype=torch.bool)
    if head.dense_index is not None:
        band[head.dense_index] = True
    top = full.argmax(-1)
    out = {"in_band": float(band[top].float().mean())}
    for k in SHORTLISTS:
        listed = coarse.masked_fill(band, float("-inf")).topk(k, -1).indices
        out[k] = float((band[top] | (listed == top[:, None]).any(-1)).float().mean())
    return out


def render(result: dict) -> str:
    lines = [
        f"{'text':<20}{'full KLD':>10}"
        + "".join(f"{'top ' + str(k):>10}" for k in TOP_KS)
        + "   winner in band / "
        + " / ".join(f"band+{k}" for k in SHORTLISTS)
    ]
    for label, row in result["texts"].items():
        s = row["shortlist"]
        lines.append(
            f"{label:<20}{row['full_kld']:>10.4f}" + "".join(f"{row['top_k_kld'][k]:>10.4f}" for k in TOP_KS)
            + f"   {s['in_band']:.1%} / " + " / ".join(f"{s[k]:.1%}" for k in SHORTLISTS)
        )  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
