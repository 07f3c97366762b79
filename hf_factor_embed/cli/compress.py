"""``hf-factor-embed compress``: factorize a model's embeddings and write checkpoint, card and compression.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app, command_line
from .options import default, option, output_path

#: An evaluation text shorter than this cannot fill a window worth measuring (about 50 tokens); refused before
#: the model loads.
MIN_EVAL_CHARACTERS = 200

Files = Annotated[list[Path] | None, typer.Option(help="Plain-text files (repeat the option).")]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  hf-factor-embed compress bundled:gemma3 --calibration pydoc --calibration lang:de --max-bytes 0.08 "
        "--out out/gemma3-en-de\n\n"
        "  hf-factor-embed compress bundled:gemma3 --rank 160 --band-share 0.9 --bits 4 --calibration pydoc "
        "--calibration lang:de --peers --out out/gemma3-en-de-r160\n\n"
        "  hf-factor-embed compress HuggingFaceTB/SmolLM2-135M-Instruct --rank 256 --calibration notes.txt "
        "--out out/smollm2-r256\n\n"
        "  hf-factor-embed compress ./my-model --budget 0.3 --eval-text held_back.txt --out out/my-model-30"
    )
)
def compress(
    model: Annotated[str, typer.Argument(help="A model folder, a Hub name, or bundled:gemma3 / bundled:smollm2.")],
    out: Annotated[str, typer.Option(help="Where to write the checkpoint, README.md and compression.json.")],
    rank: Annotated[int | None, option("rank")] = default("rank"),
    budget: Annotated[float | None, option("budget")] = default("budget"),
    target: Annotated[float | None, option("target")] = default("target"),
    target_kld: Annotated[float | None, option("target_kld")] = default("target_kld"),
    max_bytes: Annotated[str | None, option("max_bytes")] = default("max_bytes"),
    method: Annotated[
        str | None, typer.Option(help="Factorization method (default: banded with text, else svd).")
    ] = None,
    bits: Annotated[int | None, option("bits")] = default("bits"),
    group_size: Annotated[int | None, option("group_size")] = default("group_size"),
    band_bits: Annotated[int | None, option("band_bits")] = default("band_bits"),
    calibration: Annotated[list[str] | None, option("serve", "--calibration")] = default("serve"),
    dataset: Annotated[str | None, typer.Option(help="A `datasets` name whose text calibrates.")] = None,
    calibration_tokens: Annotated[int, option("calibration_tokens")] = default("calibration_tokens"),
    measure: Annotated[list[str] | None, option("measure")] = default("measure"),
    held_back: Annotated[float, option("held_back")] = default("held_back"),
    band_share: Annotated[float, option("band_share")] = default("band_share"),
    tail: Annotated[str | None, option("tail")] = default("tail"),
    tail_sub_dim: Annotated[int | None, option("tail_sub_dim")] = default("tail_sub_dim"),
    peers: Annotated[bool, option("peers")] = default("peers"),
    eval_text: Files = None,
    eval_tokens: Annotated[int, option("eval_tokens")] = default("eval_tokens"),
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside MODEL, if it ships one.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    base_model_id: Annotated[
        str | None, typer.Option(help="The Hub name the card links to, when MODEL is a local folder.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Factorize MODEL's token embedding and output head; save a checkpoint that from_pretrained reloads."""
    out = output_path(out)
    from ..calibration.sources import read_texts
    from ..errors import FactorEmbedError
    from ..pipeline.compress import compress as run_compress
    from ..pipeline.summary import summary_table

    if calibration and dataset:
        raise FactorEmbedError("give --calibration sources or --dataset, not both")
    if dataset and max_bytes is not None:  # before the dataset is read: it can be large
        raise FactorEmbedError(
            "--max-bytes measures candidates on the held-back part of each served source: name them with "
            "--calibration instead of --dataset, or give --rank"
        )
    eval_texts = {Path(f).stem: read_texts([f]) for f in eval_text or []}
    short = [name for name, body in eval_texts.items() if len(body.strip()) < MIN_EVAL_CHARACTERS]
    if short:
        raise FactorEmbedError(
            f"--eval-text {short[0]} is too short to measure (under {MIN_EVAL_CHARACTERS} characters); give at "
            "least a few hundred tokens of text"
        )
    if measure is not None and not calibration:
        raise FactorEmbedError("--measure goes with --calibration (the sources served)")
    result = run_compress(
        model,
        out,
        rank=rank,
        budget=budget,
        target=target,
        target_kld=target_kld,
        max_bytes=max_bytes,
        method=method,
        bits=bits,
        group_size=group_size,
        band_bits=band_bits,
        calibration=read_texts(None, dataset),
        serve=calibration or None,
        measure=None if measure is None else [m for m in measure if m != "none"],
        held_back=held_back,
        band_share=band_share,
        tail=tail,
        tail_sub_dim=tail_sub_dim,
        peers=peers,
        calibration_tokens=calibration_tokens,
        eval_tokens=eval_tokens,
        eval_texts=eval_texts,
        gguf_file=gguf_file,
        dtype=dtype,
        overwrite=overwrite,
        base_model_id=base_model_id,
        command=command_line(),
    )
    typer.echo(summary_table(result))
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {out} (checkpoint, README.md, compression.json)")
