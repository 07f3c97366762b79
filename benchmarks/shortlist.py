"""Does the shortlist head pick the full head's token? Teacher-forced, on text the project never tuned it to:

    python benchmarks/shortlist.py --checkpoint out/gemma3-en        # ~3 min on this CPU

For each text (``<bos>`` first, one window of 256 tokens) the checkpoint's final hidden states are kept once; then
at every position the full head's top token (transformers' :class:`FactorizedLMHead`) is compared with the top
token of the exported shortlist head (:class:`hf_factor_embed.export.layers.ExportedLMHead` with ``shortlist`` k,
the module the ONNX and ExecuTorch files are traced from) for several k. Reported: the share of positions whose top
token is a band token (where any shortlist is exact), and the share where the shortlist head's top token is the
full head's, per k. Texts: served English held back (the first 20% of pydoc_data.topics), English never calibrated
on (/usr/share/common-licenses), and gettext catalogs of five languages not served (de, ru, zh_CN, ja, ar).
Writes ``benchmarks/results/shortlist_<checkpoint name>.json``.
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
from hf_factor_embed.export.layers import ExportedFactors, ExportedLMHead
from hf_factor_embed.models.load import load_model

RESULTS = Path(__file__).parent / "results"
TEXTS = {"pydoc (served, held back)": "pydoc", "licenses (never seen)": "licenses"}
LANGUAGES = ("de", "ru", "zh_CN", "ja", "ar")
SIZES = (1024, 4096, 16384, 65536)
WINDOW = 256


def main(argv: list[str] | None = None) -> dict:
    args, model, tokenizer, head = checkpoint_and_head(__doc__, argv)
    factors = ExportedFactors(head, model.config.quantization_config, "lm_head")
    command = "python benchmarks/shortlist.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "band_rows": head.num_dense_rows, "vocab": head.num_embeddings, "texts": {}}
    texts = {label: load_source(name).split(0.2)[1] for label, name in TEXTS.items()}
    texts |= {f"lang:{code} (not served)": load_source(f"lang:{code}").text for code in LANGUAGES}
    bos = bos_prefix(tokenizer)
    for label, text in texts.items():
        ids = ([bos] if bos is not None else []) + tokenizer(text[:20000], add_special_tokens=False).input_ids
        hidden, _ = head_input_and_logits(model, torch.tensor([ids[:WINDOW]]))
        with torch.no_grad():
            top = head(hidden).argmax(-1)
            row = {"positions": top.numel(), "in_band": float(_in_band(head, top).float().mean())}
            for k in SIZES:
                shortlist = ExportedLMHead(head, factors, shortlist=k)
                # a few positions at a time, as a decode step sees them: each reads k x m codes as int64
                listed = torch.cat([shortlist(part).argmax(-1) for part in hidden.split(8, dim=1)], dim=1)
                row[str(k)] = float((listed == top).float().mean())
        result["texts"][label] = row
        print(label, json.dumps(row), flush=True)
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"shortlist_{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def checkpoint_and_head(doc: str, argv: list[str] | None):
    """What both shortlist benchmarks read from their command line: (arguments, model, tokenizer, its head)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint with a coded tail")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.checkpoint)
    return args, model, tokenizer, model.get_output_embeddings()


def head_input_and_logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head reads at every position of ``ids`` (1, n), (1, n, d), and the model's logits."""
    kept = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, output: kept.append(args[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    hook.remove()
    return kept[0], logits


def _in_band(head, top: torch.Tensor) -> torch.Tensor:
    band = torch.zeros(head.num_embeddings, dtype=torch.bool)
    if head.dense_index is not None:
        band[head.dense_index] = True
    return band[top]


def render(name: str, result: dict) -> str:
    lines = [
        f"{name}: the shortlist head's top token = the full head's (share of teacher-forced positions); "
        f"band {result['band_rows']:,} of {result['vocab']:,} tokens",
        f"{'text':<28}{'in band':>9}" + "".join(f"{'k=' + str(k):>10}" for k in SIZES),
    ]
    for label, row in result["texts"].items():
        lines.append(f"{label:<28}{row['in_band']:>9.1%}" + "".join(f"{row[str(k)]:>10.1%}" for k in SIZES))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
