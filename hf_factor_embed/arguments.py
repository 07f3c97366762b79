"""Checks of a user's arguments that need no model: run first, so a mistake costs a second, not minutes of loading,
and nothing is written. Each raises :class:`FactorEmbedError` with what is wrong and what to give instead."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .errors import FactorEmbedError
from .options import is_number, is_whole


def positive_int(option: str, value, *, optional: bool = False) -> None:
    """``value`` is a whole number above 0 (or None where ``optional``)."""
    if value is None and optional:
        return
    if not is_whole(value) or value < 1:
        raise FactorEmbedError(f"{option} {value!r} must be a whole number above 0")


def positive_number(option: str, value, *, optional: bool = False) -> None:
    """``value`` is a number above 0 (or None where ``optional``)."""
    if value is None and optional:
        return
    if not is_number(value) or not value > 0:
        raise FactorEmbedError(f"{option} {value!r} must be a number above 0")


def one_of(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FactorEmbedError(f"{option} {value!r} is not one of: {', '.join(choices)}")


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
    if path.is_dir():
        raise FactorEmbedError(f"{path} is a folder, not a text file; pass plain-text files")
    if path.exists() and not path.is_file():
        raise FactorEmbedError(f"{path} is not a regular file (a device or a pipe); pass plain-text files")
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
