"""Real English text that ships with every CPython and every Debian system, in three clearly different kinds.

* ``pydoc``: the help topics of ``pydoc_data.topics`` (79 topics on Python 3.11, ~0.47 MB): the Python language
  reference, technical prose mixed with code.
* ``licenses``: the license texts under ``/usr/share/common-licenses`` (GPL, Apache, MPL, CC0, ...; ~0.26 MB):
  legal prose.
* ``changelogs``: the Debian changelogs of a fixed set of base packages (``/usr/share/doc/<pkg>/changelog.Debian.gz``;
  ~0.33 MB): terse release notes full of names, e-mail addresses, version numbers and bug numbers.

Each is joined in a fixed order, so the text, and every figure measured on it, is the same on every machine with
the same Python and Debian versions. The benchmarks calibrate on one kind and evaluate on the others.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

LICENSES_DIR = Path("/usr/share/common-licenses")
DEBIAN_DOC_DIR = Path("/usr/share/doc")
#: Essential or required Debian packages: present on every Debian system, each with a changelog of its own.
CHANGELOG_PACKAGES = (
    "libc6",
    "debianutils",
    "coreutils",
    "gzip",
    "util-linux",
    "perl-base",
    "ncurses-base",
    "login",
    "passwd",
    "bash",
    "findutils",
    "grep",
    "diffutils",
    "tar",
    "sed",
)


def pydoc_topics_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def license_text() -> str:
    """Every license under /usr/share/common-licenses once (symbolic links such as GPL -> GPL-3 skipped)."""
    files = sorted(p for p in LICENSES_DIR.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise FileNotFoundError(f"no license texts under {LICENSES_DIR} (a Debian system ships them)")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def changelog_text() -> str:
    """The Debian changelogs of :data:`CHANGELOG_PACKAGES`, those present, in that order."""
    files = [DEBIAN_DOC_DIR / pkg / "changelog.Debian.gz" for pkg in CHANGELOG_PACKAGES]
    found = [f for f in files if f.is_file()]
    if not found:
        raise FileNotFoundError(f"no Debian changelogs under {DEBIAN_DOC_DIR} (a Debian system ships them)")
    return "\n\n".join(gzip.open(f, "rt", encoding="utf-8", errors="replace").read() for f in found)


#: Name -> the function returning that source's text.
TEXT_SOURCES: dict[str, Callable[[], str]] = {
    "pydoc": pydoc_topics_text,
    "licenses": license_text,
    "changelogs": changelog_text,
}


def source_text(name: str) -> str:
    try:
        return TEXT_SOURCES[name]()
    except KeyError:
        raise ValueError(f"unknown text source {name!r}; known: {sorted(TEXT_SOURCES)}") from None
