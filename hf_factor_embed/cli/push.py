"""``hf-factor-embed push``: upload a compressed folder, its card included, to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app


@app.command(epilog="Example:\n\n  hf-factor-embed push out/smollm2-r256 my-org/SmolLM2-135M-factorized-r256 --private")
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written by compress (or recover).")],
    repo_id: Annotated[str, typer.Argument(help="The Hub repository, e.g. my-org/my-model-factorized.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    token: Annotated[str | None, typer.Option(help="A Hub token (default: the logged-in one, HF_TOKEN).")] = None,
) -> None:
    """Create REPO_ID if needed and upload FOLDER in one commit (huggingface_hub create_commit)."""
    from ..hub.push import push as run_push

    typer.echo(f"uploaded: {run_push(folder, repo_id, private=private, token=token)}")
