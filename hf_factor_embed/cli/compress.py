"""``hf-factor-embed compress``: factorize a model's embeddings and write checkpoint, card and compression.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app, command_line

Files = Annotated[list[Path] | None, typer.Option(help="Plain-text files (repeat the option).")]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  hf-factor-embed compress HuggingFaceTB/SmolLM2-135M-Instruct --rank 256 --calibration notes.txt "
        "--out out/smollm2-r256\n\n"
        "  hf-factor-embed compress ./my-model --budget 0.3 --eval-text held_back.txt --out out/my-model-30"
    )
)
def compress(
    model: Annotated[str, typer.Argument(help="A model folder or a Hub name.")],
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint, README.md and compression.json.")],
    rank: Annotated[int | None, typer.Option(help="The rank r of the factors.")] = None,
    budget: Annotated[float | None, typer.Option(help="Instead of --rank: share of parameters kept (0-1).")] = None,
    target: Annotated[
        float | None, typer.Option(help="Instead of --rank: largest perplexity ratio to dense, e.g. 1.1.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Factorization method (default: banded with text, else svd).")
    ] = None,
    bits: Annotated[
        int | None, typer.Option(help="Store the codes A as 8- or 4-bit integers with fp16 scales.")
    ] = None,
    group_size: Annotated[
        int | None, typer.Option(help="With --bits: columns per scale of A (default: per row for 8, 32 for 4).")
    ] = None,
    band_bits: Annotated[
        int | None, typer.Option(help="With --bits: bits of the basis B and the band's rows (default 8).")
    ] = None,
    calibration: Files = None,
    dataset: Annotated[str | None, typer.Option(help="A `datasets` name whose text calibrates.")] = None,
    calibration_tokens: Annotated[int, typer.Option(help="Calibration tokens used at most.")] = 32768,
    eval_text: Files = None,
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside MODEL, if it ships one.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    base_model_id: Annotated[
        str | None, typer.Option(help="The Hub name the card links to, when MODEL is a local folder.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Factorize MODEL's token embedding and output head; save a checkpoint that from_pretrained reloads."""
    from ..compress import compress as run_compress
    from ..compress import read_texts

    result = run_compress(
        model,
        out,
        rank=rank,
        budget=budget,
        target=target,
        method=method,
        bits=bits,
        group_size=group_size,
        band_bits=band_bits,
        calibration=read_texts(calibration, dataset),
        calibration_tokens=calibration_tokens,
        eval_texts={Path(f).stem: read_texts([f]) for f in eval_text or []},
        gguf_file=gguf_file,
        dtype=dtype,
        overwrite=overwrite,
        base_model_id=base_model_id,
        command=command_line(),
    )
    report = result["report"]
    b, a = report["model_params_before"], report["model_params_after"]
    typer.echo(f"method {report['method']}: parameters {b:,} -> {a:,} ({a / b:.1%})")
    for name, e in result["evaluation"].items():
        typer.echo(f"{name}: {e['metric']}: dense {e['dense']}, factorized {e['factorized']}")
    typer.echo(f"wrote {out} (checkpoint, README.md, compression.json)")
