"""``hf-factor-embed densify``: a factorized checkpoint back to a plain dense one (same outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app, command_line
from .options import output_path


@app.command(epilog="Example:\n\n  hf-factor-embed densify out/smollm2-r256 --out out/smollm2-r256-dense")
def densify(
    folder: Annotated[Path, typer.Argument(help="A factorized checkpoint folder.")],
    out: Annotated[str, typer.Option(help="Where to write the dense checkpoint.")],
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Rebuild dense embedding matrices from the factors, for tools that do not load hf-factor-embed."""
    out = output_path(out)
    from .. import densify as densify_model
    from ..arguments import check_writable_folder
    from ..errors import FactorEmbedError
    from ..folders import check_complete, check_not_input, check_output_dir, is_factorized_checkpoint, staged_folder
    from ..models.load import load_model

    if not is_factorized_checkpoint(folder):
        raise FactorEmbedError(f"{folder} is not factorized; there is nothing to densify")
    check_complete(folder, "the checkpoint")
    out = check_output_dir(out, overwrite=overwrite)
    check_not_input(out, [folder])
    check_writable_folder(out)
    with staged_folder(out, overwrite=overwrite, inputs=[folder], command=command_line()) as staging:
        model, tokenizer = load_model(folder)
        densify_model(model).save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    typer.echo(f"wrote {out} (dense, {model.num_parameters():,} parameters)")
