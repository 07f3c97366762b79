"""Model names checked and read cheaply, before any weights load: ``bundled:<name>``, a folder, or a Hub name."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FactorEmbedError

#: A Hub repository name: ``name`` or ``namespace/name`` (huggingface_hub's rule, without the length limits).
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_name(name: str | Path, what: str = "model") -> None:
    """A model argument names something that can exist: ``bundled:<name>``, an existing folder or file, or a Hub
    name (refused at once when offline and not in the local cache, instead of after a minute of retries)."""
    text = str(name)
    if text.startswith("bundled:"):
        from .bundled import BUNDLED

        if text.removeprefix("bundled:") not in BUNDLED:
            known = ", ".join(f"bundled:{b}" for b in BUNDLED)
            raise FactorEmbedError(f"unknown {what} {text}; bundled models: {known}")
        return
    if Path(text).exists():
        return
    if not _HUB_NAME.match(text) or text.startswith((".", "~")):
        raise FactorEmbedError(f"the {what} folder {text} does not exist (and it is not a Hub name); check the path")
    if _offline() and not _cached_on_this_machine(text):
        raise FactorEmbedError(
            f"the {what} {text} is neither a local folder nor in the Hub cache, and the Hub is offline "
            "(HF_HUB_OFFLINE=1); give a local folder or bundled:gemma3 / bundled:smollm2"
        )


def embedding_shape(model_name: str | Path, gguf_file: str | None = None) -> tuple[int, int, bool] | None:
    """(vocabulary size, width, tied head) from the model's config alone, in a second, for the checks that can run
    before the weights load; None where the config cannot be read that cheaply (a GGUF's config is as slow to read
    as its weights; a path that is not a model folder: loading says so) or does not say."""
    if gguf_file is not None:
        return None
    from transformers import AutoConfig

    from .bundled import resolve

    name = resolve(model_name)
    if Path(name).exists() and not Path(name, "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(name).get_text_config()
    v, d = getattr(config, "vocab_size", None), getattr(config, "hidden_size", None)
    if not (isinstance(v, int) and isinstance(d, int)):
        return None
    return v, d, bool(getattr(config, "tie_word_embeddings", True))


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_on_this_machine(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_gguf_file(name: str | Path, gguf_file: str | None) -> None:
    """A ``--gguf-file`` inside a local folder is there (transformers would look for it on the Hub, under the
    folder's path, and say so in a URL)."""
    if gguf_file is None or not Path(str(name)).is_dir():
        return
    if not Path(str(name), gguf_file).is_file():
        present = sorted(p.name for p in Path(str(name)).glob("*.gguf"))
        raise FactorEmbedError(
            f"--gguf-file {gguf_file} is not in {name}; GGUF files there: {', '.join(present) or 'none'}"
        )
