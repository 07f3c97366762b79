"""Upload a compressed checkpoint folder to the Hub with ``huggingface_hub`` (``create_repo`` + one
``create_commit``), its model card included. The local folder is only read."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FactorEmbedError
from ..folders import check_complete, is_factorized_checkpoint
from .card import CARD_FILE, render_card

COMMIT_MESSAGE = "Upload factorized checkpoint (hf-factor-embed)"


def push(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, api=None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` in one commit; returns the commit's URL.

    The card is rendered afresh from the folder's ``compression.json`` with ``repo_id`` in its loading snippet
    (the local README.md is left as it is); without that file the folder's own README.md goes up unchanged.
    Network and Hub failures become one clear :class:`FactorEmbedError`.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not folder.exists():
        raise FactorEmbedError(f"the folder {folder} does not exist; give the folder that compress wrote")
    if not folder.is_dir():
        raise FactorEmbedError(f"{folder} is not a folder; give the folder that compress wrote")
    if not is_factorized_checkpoint(folder):
        raise FactorEmbedError(f"{folder} is not a factorized checkpoint; compress it first (hf-factor-embed compress)")
    check_repo_id(repo_id)
    check_complete(folder, "the folder")
    verify_loads(folder)
    api = api or HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in upload_files(folder)
        if path.relative_to(folder).as_posix() != CARD_FILE
    ]
    card = _card_for(folder, repo_id)
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # One commit with explicit operations (not upload_folder's pipeline): exactly these files, nothing else.
        commit = api.create_commit(repo_id, operations=operations, commit_message=COMMIT_MESSAGE, repo_type="model")
    except Exception as error:  # httpx / HfHubHTTPError / OSError: the user gets one line, never a traceback
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FactorEmbedError(
            f"the upload to {repo_id} failed ({type(error).__name__}: {first_line}); the local folder {folder} "
            "is unchanged"
        ) from error
    return str(getattr(commit, "commit_url", commit))


def check_repo_id(repo_id: str) -> None:
    """A repository name the Hub takes (``name`` or ``namespace/name``), checked before the folder loads."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise FactorEmbedError(
            f"{repo_id!r} is not a Hub repository name ({first_line}); give namespace/name"
        ) from None


def verify_loads(folder: Path) -> None:
    """Load ``folder`` as users will (``from_pretrained``, with every check of the factors, their shapes, the files'
    lengths and the band's token ids) before anything is uploaded: a damaged checkpoint never reaches the Hub."""
    from ..models.load import load_model

    try:
        load_model(folder)
    except Exception as error:  # noqa: BLE001  (whatever transformers raises, the user gets one line)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise FactorEmbedError(f"{folder} does not load ({first_line}); nothing was uploaded: save it again") from error


#: Sub-folders that stay local: training checkpoints (optimizer state) are not part of the model.
LOCAL_ONLY = ("checkpoints",)


def upload_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that make up the model: everything but :data:`LOCAL_ONLY` and hidden files."""
    files = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_file() and parts[0] not in LOCAL_ONLY and not any(p.startswith(".") for p in parts):
            files.append(path)
    return files


def _card_for(folder: Path, repo_id: str) -> str | None:
    summary = folder / "compression.json"
    if summary.is_file():
        return str(render_card(json.loads(summary.read_text()), repo_id=repo_id))
    readme = folder / CARD_FILE
    return readme.read_text() if readme.is_file() else None
