"""What a user serves, as named text sources, each split into a calibration part and a held-back part.

A source is given by name (``spec``):

* a local kind of English text: ``pydoc`` (Python's reference), ``licenses`` (/usr/share/common-licenses),
  ``changelogs`` (Debian changelogs), ``messages`` (the English originals of the gettext catalogs' messages:
  user-interface strings); see :mod:`hf_factor_embed.calibration.data`;
* a language: ``lang:<code>`` (``lang:de``, ``lang:zh_CN``, ...): the translated messages of the machine's gettext
  catalogs in that language (:mod:`hf_factor_embed.calibration.gettext_catalogs`);
* a plain-text file: its path (the source is named by the file's stem).

Each source is held back in part (its first ``held_back`` share, cut at a line end): the calibration statistics
never see that part, and quality is measured on it, so every served source is measured on text it was not fitted
to. Sources that are not served are measured whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..arguments import read_text_file
from ..errors import FactorEmbedError

if TYPE_CHECKING:
    from datasets import Dataset

LANGUAGE_PREFIX = "lang:"
#: The catalogs whose English originals make the ``messages`` source (any language's would do; German's are many).
MESSAGES_FROM = "de"
#: Languages measured by default when not served: scripts and families the English calibration never sees.
DEFAULT_UNSERVED_LANGUAGES = ("de", "ru", "zh_CN")


@dataclass(frozen=True)
class TextSource:
    """One named source of text: ``text`` and where it came from (``origin``), for reports and cards."""

    name: str
    text: str
    origin: str

    def split(self, held_back: float = 0.2) -> tuple[str, str]:
        """(calibration part, held-back part): the held-back part is the first ``held_back`` share of the text,
        cut at the next line end, so no line is in both."""
        if not 0 < held_back < 1:
            raise FactorEmbedError(f"held_back={held_back!r} must be a share strictly between 0 and 1")
        cut = int(len(self.text) * held_back)
        end = self.text.find("\n", cut)
        cut = cut if end < 0 else end + 1
        if not self.text[cut:].strip():
            lines = len(self.text.splitlines())
            raise FactorEmbedError(
                f"{self.name}: all of its text ({lines} line{'s' * (lines != 1)}) went to the held-back part "
                f"({held_back:.0%}, cut at a line end), leaving nothing to calibrate on; give more text"
            )
        return self.text[cut:], self.text[:cut]


def _local_english(name: str) -> TextSource:
    from .data import TEXT_SOURCES
    from .gettext_catalogs import catalog_text

    if name == "messages":
        origin = f"English originals of the gettext messages (/usr/share/locale/{MESSAGES_FROM}/LC_MESSAGES/*.mo)"
        return TextSource(name, catalog_text(MESSAGES_FROM, original=True), origin)
    origins = {
        "pydoc": "Python's reference (pydoc_data.topics)",
        "licenses": "license texts (/usr/share/common-licenses)",
        "changelogs": "Debian changelogs (/usr/share/doc/*/changelog.Debian.gz)",
    }
    return TextSource(name, TEXT_SOURCES[name](), origins[name])


#: The local kinds of English text, by name.
ENGLISH_KINDS = ("pydoc", "licenses", "changelogs", "messages")


def load_source(spec: str | Path) -> TextSource:
    """The source named by ``spec``: a local English kind, ``lang:<code>``, or a plain-text file."""
    spec = str(spec)
    if spec in ENGLISH_KINDS:
        return _local_english(spec)
    if spec.startswith(LANGUAGE_PREFIX):
        from .gettext_catalogs import LOCALE_DIR, catalog_text, languages

        code = spec[len(LANGUAGE_PREFIX) :]
        if not re.fullmatch(r"[A-Za-z]{2,3}(?:[_@.-][A-Za-z0-9]+)*", code):
            raise FactorEmbedError(
                f"{spec!r}: a language is a gettext code such as de, pt_BR or sr@latin, not {code!r}"
            )
        if not Path(LOCALE_DIR, code).is_dir():
            raise FactorEmbedError(
                f"no gettext catalogs for language {code!r}; languages here: {', '.join(languages()[:12])}, ..."
            )
        return TextSource(spec, catalog_text(code), f"gettext messages in {code} (/usr/share/locale/{code})")
    path = Path(spec)
    if path.exists():  # a folder, a device or a pipe is refused by read_text_file, naming what it is
        text = read_text_file(path)
        if not text.strip():
            raise FactorEmbedError(f"{path} is empty; give a file with text in it")
        return TextSource(path.stem, text, str(path))
    known = f"one of {', '.join(ENGLISH_KINDS)}, generated (the model's own text), or lang:<code> (e.g. lang:de)"
    if path.suffix or len(path.parts) > 1:
        raise FactorEmbedError(f"text file not found: {spec}; give an existing plain-text file, or {known}")
    raise FactorEmbedError(f"{spec!r} is neither a file nor a known source; give a text file, {known}")


def load_sources(specs: Iterable[str | Path]) -> list[TextSource]:
    """Each spec once, in order; two sources of one name are refused (their figures could not be told apart)."""
    sources = [load_source(s) for s in dict.fromkeys(str(s) for s in specs)]
    names = [s.name for s in sources]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise FactorEmbedError(f"two sources are named {duplicate!r}; rename one of the files")
    return sources


def unserved_defaults(served: Iterable[str]) -> list[str]:
    """What to measure beside the served sources: every local English kind and the default languages not served."""
    served = set(served)
    candidates = [*ENGLISH_KINDS, *(LANGUAGE_PREFIX + code for code in DEFAULT_UNSERVED_LANGUAGES)]
    return [c for c in candidates if c not in served]


def read_texts(files: Sequence[str | Path] | None = None, dataset: str | None = None) -> str | None:
    """The text of plain-text files, or of a ``datasets`` name's ``text`` column; None when neither is given."""
    if files:
        return "\n\n".join(read_text_file(f) for f in files)
    if dataset:
        return "\n\n".join(t for t in load_text(dataset=dataset)["text"] if t)
    return None


def load_text(
    files: Sequence[str | Path] | None = None,
    dataset: str | None = None,
    *,
    split: str = "train",
    text_column: str = "text",
) -> Dataset:
    """Text files (one example per file: documents stay whole) or a ``datasets`` name, as a Dataset with a
    ``text`` column."""
    from datasets import Dataset, load_dataset

    if (files is None) == (dataset is None):
        raise FactorEmbedError("give text files or a dataset name (exactly one of them)")
    if files is not None:  # each file checked to be UTF-8 text, one example per file
        data = Dataset.from_dict({"text": [read_text_file(f) for f in files]})
    else:
        data = load_dataset(dataset, split=split)
    if text_column not in data.column_names:
        raise FactorEmbedError(f"the dataset has no {text_column!r} column; it has {data.column_names}")
    return data.select_columns([text_column]).rename_column(text_column, "text") if text_column != "text" else data
