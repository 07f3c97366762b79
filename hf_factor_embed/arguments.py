"""Checks of a user's arguments that need no model: run first, so a mistake costs a second, not minutes of loading,
and nothing is written. Each raises :class:`FactorEmbedError` with what is wrong and what to give instead."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .errors import FactorEmbedError

#: A Hub repository name: ``name`` or ``namespace/name`` (huggingface_hub's rule, without the length limits).
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def positive_int(option: str, value, *, optional: bool = False) -> None:
    """``value`` is a whole number above 0 (or None where ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FactorEmbedError(f"{option} {value!r} must be a whole number above 0")


def positive_number(option: str, value, *, optional: bool = False) -> None:
    """``value`` is a number above 0 (or None where ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FactorEmbedError(f"{option} {value!r} must be a number above 0")


def one_of(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FactorEmbedError(f"{option} {value!r} is not one of: {', '.join(choices)}")


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


def check_writable_folder(out: str | Path, option: str = "--out") -> None:
    """``out`` can be created and written: probed with a temporary folder inside its nearest existing parent,
    removed at once, so a checkpoint is not lost after minutes of work on a path that cannot take it."""
    out = Path(out).expanduser()
    parent = out if out.is_dir() else next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise FactorEmbedError(f"{option} {out}: {parent} is not a folder; give a folder path you can write to")
    try:
        probe = tempfile.mkdtemp(prefix=".hf-factor-embed-probe-", dir=parent)
    except OSError as error:
        raise FactorEmbedError(
            f"{option} {out} cannot be written ({error.strerror or error} in {parent}); give a folder you can write to"
        ) from None
    shutil.rmtree(probe, ignore_errors=True)


def read_text_file(path: str | Path) -> str:
    """A plain-text file's text, decoded as UTF-8; a binary file or another encoding is refused, naming the byte."""
    path = Path(path)
    if not path.is_file():
        raise FactorEmbedError(f"text file not found: {path}; pass existing plain-text files")
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise FactorEmbedError(f"{path} is a binary file, not text; give a plain-text (UTF-8) file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FactorEmbedError(
            f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); convert it, e.g. "
            f"iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}"
        ) from None
