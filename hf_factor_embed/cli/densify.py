"""``hf-factor-embed densify``: a factorized checkpoint back to a plain dense one (same outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app


@app.command(epilog="Example:\n\n  hf-factor-embed densify out/smollm2-r256 --out out/smollm2-r256-dense")
def densify(
    folder: Annotated[Path, typer.Argument(help="A factorized checkpoint folder.")],
    out: Annotated[Path, typer.Option(help="Where to write the dense checkpoint.")],
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Rebuild dense embedding matrices from the factors, for tools that do not load hf-factor-embed."""
    from .. import densify as densify_model
    from ..arguments import check_writable_folder
    from ..errors import FactorEmbedError
    from ..folders import FACTORIZED_ONLY, check_output_dir, is_factorized_checkpoint
    from ..models.load import load_model

    if not is_factorized_checkpoint(folder):
        raise FactorEmbedError(f"{folder} is not factorized; there is nothing to densify")
    out = check_output_dir(out, overwrite=overwrite)
    check_writable_folder(out)
    model, tokenizer = load_model(folder)
    densify_model(model).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    for stale in FACTORIZED_ONLY:  # written by compress or recover: they describe a model no longer there
        path = out / stale
        if path.is_file() and (stale != "README.md" or "hf-factor-embed" in path.read_text(errors="replace")):
            path.unlink()
    typer.echo(f"wrote {out} (dense, {model.num_parameters():,} parameters)")
