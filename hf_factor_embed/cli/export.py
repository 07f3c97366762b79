"""``hf-factor-embed export``: a factorized checkpoint as an ONNX file, checked in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import output_path


@app.command(
    epilog=(
        "Example:\n\n  hf-factor-embed export out/gemma3-en --format onnx --out out/gemma3-en-onnx\n\n"
        "  hf-factor-embed export out/gemma3-en --body int4 --out out/gemma3-en-int4\n\n"
        "  hf-factor-embed export out/gemma3-en --body int4 --head shortlist --out out/gemma3-en-fast\n\n"
        'Needs: pip install "hf-factor-embed\\[export]"'  # \\[: rich markup would eat [export]
    ),
)
def export(
    folder: Annotated[Path, typer.Argument(help="A factorized checkpoint folder (compress or save_pretrained).")],
    out: Annotated[str, typer.Option(help="Where to write the model file, the tokenizer and export.json.")],
    format: Annotated[
        str, typer.Option(help="onnx (model.onnx, for ONNX Runtime) or executorch (model.pte, XNNPACK-lowered).")
    ] = "onnx",
    body: Annotated[
        str,
        typer.Option(
            help="fp32 (as trained), int8 or int4: the transformer body's linears quantized by the runtime's own "
            "tools (ONNX Runtime: quantize_dynamic / MatMulNBits block 32; ExecuTorch: 8da8w / 8da4w); the "
            "factors keep their own integers."
        ),
    ] = "fp32",
    head: Annotated[
        str,
        typer.Option(
            help="full (every token's logit) or shortlist[:K]: the band's exact logits and the full logits of K "
            "tail tokens (default 8192; the best of the 8K its coarse part ranks highest, once a quarter of their "
            "codes is read), the rest -inf: a greedy head cheaper than dense (a decoder with a product-coded tail)."
        ),
    ] = "full",
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Export FOLDER with its integers kept, then check the file against transformers in its runtime (greedy
    tokens for a decoder, hidden states for an encoder)."""
    out = output_path(out)
    from ..export import export as export_folder  # it checks everything it can before the model loads

    typer.echo(export_folder(folder, out, format=format, body=body, head=head, overwrite=overwrite))
