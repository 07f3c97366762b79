"""Write a ``compress`` run's folder: the checkpoint (factors only) and tokenizer, checked by reloading it the way
users will, the plots, ``compression.json`` and the model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..folders import folder_bytes
from ..quantizer.structure import factorized_layers

logger = logging.getLogger(__name__)

COMPRESSION_FILE = "compression.json"


def save_folder(model, tokenizer, out: Path, result: dict, spectrum: dict | None) -> None:
    """Save, reload and compare, then write the record (``result`` gains the checkpoint's bytes, the reload check
    and the plots) and the card."""
    from ..hub.card import write_card

    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    result["checkpoint_bytes"] = folder_bytes(out)
    result["reload"] = check_reload(model, out)
    if spectrum is not None:
        result["plots"] = _plots(out, spectrum, model.factor_embed_report)
    (out / COMPRESSION_FILE).write_text(json.dumps(result, indent=2, default=str))
    write_card(out, result)


@torch.no_grad()
def check_reload(model, out: Path) -> dict:
    """Reload ``out`` the way users will and compare: the checkpoint must give the same outputs and tying."""
    reloaded = type(model).from_pretrained(out, dtype=next(model.parameters()).dtype).eval()
    probe = torch.arange(1, 65).remainder(model.get_input_embeddings().weight.shape[0])[None]
    first, second = model(input_ids=probe)[0], reloaded(input_ids=probe)[0]
    head, embedding = reloaded.get_output_embeddings(), reloaded.get_input_embeddings()
    return {
        "identical": bool(torch.equal(first, second)),
        "tied": head is not None and getattr(head, "weight", None) is getattr(embedding, "weight", 0),
        "factorized_layers": len(factorized_layers(reloaded)),
    }


def _plots(out: Path, spectrum: dict, report) -> list[str]:
    try:
        from ..measure.plots import spectrum_plot
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install 'hf-factor-embed[plots]')")
        return []
    ranks = {m.role: m.rank for m in report.modules}
    path = out / "spectrum.png"
    spectrum_plot(spectrum, path, ranks=ranks)
    return [path.name]
