"""The marker of a folder being written (:func:`hf_factor_embed.folders.staged_folder`): there from a run's start,
removed as its last step. A folder that holds it was left by an interrupted run, and loading, ``push`` and a re-run
say so instead of reading it as a result."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError

INCOMPLETE = ".hf-factor-embed-incomplete"


def check_complete(folder: str | Path, what: str = "the folder") -> None:
    """Refuse a folder that still holds the :data:`INCOMPLETE` marker of another process (the run writing it reads
    it back itself: ``compress``'s reload check)."""
    if Path(folder, INCOMPLETE).exists() and _writer(folder) != os.getpid():
        raise CheckpointError(
            f"{what} {folder} was left by an interrupted run ({marker_text(folder)}): it may lack files or hold "
            f"stale ones; run the command again (with --overwrite) or remove the folder"
        )


def _writer(folder: str | Path) -> int | None:
    try:
        return json.loads(Path(folder, INCOMPLETE).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def marker_text(folder: str | Path) -> str:
    """The command that wrote the marker, as it recorded it."""
    try:
        return json.loads(Path(folder, INCOMPLETE).read_text()).get("command") or "no command recorded"
    except (OSError, ValueError):
        return "no command recorded"
