"""Output folders: nothing a user already has is overwritten unless they say so."""

from __future__ import annotations

import json
from pathlib import Path

from .config import QUANT_METHOD
from .errors import FactorEmbedError

#: Files beside a factorized checkpoint that describe its factorization: the card, the report and its plots, and a
#: recovery's summary. A dense model written over that folder must not keep them.
FACTORIZED_ONLY = ("README.md", "compression.json", "spectrum.png", "recovery.json")


def check_output_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to write into a folder that already holds something, unless told to (``overwrite``) or continuing
    there (``resume``, which needs the folder's checkpoints)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FactorEmbedError(f"{out} is a file; give a folder for --out")
    if resume:
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FactorEmbedError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    return out


def is_factorized_checkpoint(folder: str | Path) -> bool:
    """Read from config.json alone, before any weight loads (a wrong folder fails fast and quietly)."""
    config = Path(folder, "config.json")
    if not Path(folder).exists():
        raise FactorEmbedError(f"the folder {folder} does not exist; give a checkpoint folder")
    if not config.is_file():
        raise FactorEmbedError(f"{folder} is not a saved model folder (no config.json); give a checkpoint folder")
    quantization = json.loads(config.read_text()).get("quantization_config") or {}
    return quantization.get("quant_method") == QUANT_METHOD


def folder_bytes(folder: str | Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))
