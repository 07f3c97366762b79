"""Real English text that ships with every CPython: the help topics of ``pydoc_data.topics``.

79 topics on Python 3.11 (sections of the language reference, ~0.47 MB of prose and code), joined in sorted key
order so the text, and every figure measured on it, is the same on every machine with the same Python version.
"""

from __future__ import annotations


def pydoc_topics_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))
