"""Translated messages from the machine's gettext catalogs (``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``): real
text in ~190 languages on every Debian system, read straight from the binary ``.mo`` format.

Python's :mod:`gettext` refuses some real catalogs (a header it cannot parse, a charset it does not know), and one
bad file should cost its own messages only. So each catalog is parsed here by the format's own rules (a magic
number, a table of original strings, a table of translations) and decoded by the charset its own header declares;
a catalog that does not parse is skipped with a logged note. The ISO code-name lists (``iso_*.mo``: names of
countries, languages and currencies) are skipped: they are word lists, not running text.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LOCALE_DIR = Path("/usr/share/locale")
_MAGIC = {0x950412DE: "<", 0xDE120495: ">"}  # the same magic number read little- or big-endian
_CHARSET = re.compile(rb"charset=([A-Za-z0-9_.:-]+)", re.IGNORECASE)


class CatalogError(ValueError):
    """A .mo file that is not a well-formed catalog."""


@dataclass
class Catalog:
    path: Path
    charset: str
    messages: list[tuple[str, str]]  # (original, translation), the header entry left out


def read_mo(path: str | Path) -> Catalog:
    """Parse one .mo file; raises :class:`CatalogError` when it is not a well-formed catalog."""
    data = Path(path).read_bytes()
    if len(data) < 28:
        raise CatalogError(f"{path}: {len(data)} bytes, too short for a .mo header")
    order = _MAGIC.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        raise CatalogError(f"{path}: not a .mo file (bad magic number)")
    _revision, count, originals_at, translations_at = struct.unpack(order + "4I", data[4:20])
    raw = [(_string(data, order, originals_at, i), _string(data, order, translations_at, i)) for i in range(count)]
    header = next((t for o, t in raw if o == b""), b"")
    match = _CHARSET.search(header)
    charset = match.group(1).decode("ascii") if match else "utf-8"
    if charset.upper() == "CHARSET":  # an untranslated template's placeholder
        charset = "utf-8"
    try:
        messages = [(o.decode(charset), t.decode(charset)) for o, t in raw if o]
    except (LookupError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot decode as its declared charset {charset!r} ({exc})") from exc
    return Catalog(Path(path), charset, messages)


def _string(data: bytes, order: str, table: int, index: int) -> bytes:
    start = table + 8 * index
    if start + 8 > len(data):
        raise CatalogError("string table runs past the end of the file")
    length, offset = struct.unpack(order + "2I", data[start : start + 8])
    if offset + length > len(data):
        raise CatalogError("a string runs past the end of the file")
    return data[offset : offset + length]


def catalog_files(language: str, locale_dir: str | Path = LOCALE_DIR) -> list[Path]:
    """The language's catalogs in name order, without the ISO code-name lists."""
    folder = Path(locale_dir, language, "LC_MESSAGES")
    return sorted(p for p in folder.glob("*.mo") if not p.name.startswith("iso_"))


def languages(locale_dir: str | Path = LOCALE_DIR) -> list[str]:
    """Every language with at least one catalog of running text."""
    root = Path(locale_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and catalog_files(p.name, root)) if root.is_dir() else []


def catalog_text(language: str, *, original: bool = False, locale_dir: str | Path = LOCALE_DIR) -> str:
    """The language's translated messages (``original=True``: the English originals), one message per line, in
    catalog-name and file order. Plural forms each get a line; a message that is only whitespace is dropped."""
    files = catalog_files(language, locale_dir)
    if not files:
        raise FileNotFoundError(f"no gettext catalogs for {language!r} under {locale_dir}; see `ls {locale_dir}`")
    lines: list[str] = []
    for path in files:
        try:
            catalog = read_mo(path)
        except (CatalogError, OSError) as exc:
            logger.warning("skipped %s: %s", path, exc)
            continue
        for source, translation in catalog.messages:
            text = source if original else translation
            lines.extend(part.strip() for part in text.split("\x00") if part.strip())
    return "\n".join(lines)
