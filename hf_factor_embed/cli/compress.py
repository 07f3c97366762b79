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
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint, README.md and compression.json.")],
    rank: Annotated[int | None, typer.Option(help="The rank r of the factors.")] = None,
    budget: Annotated[float | None, typer.Option(help="Instead of --rank: share of parameters kept (0-1).")] = None,
    target: Annotated[
        float | None,
        typer.Option(
            help="Instead of --rank: largest perplexity ratio to dense, e.g. 1.02. With --calibration sources, the "
            "plan searches the smallest budget at which every served source's held-back part stays within it; "
            "otherwise the rank is searched."
        ),
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option(
            help="Instead of --rank: a byte budget for the embedding as stored, a share of its fp32 bytes (0.08) or "
            "a size (40MB). Candidates (band size, tail format) are measured on the served sources' held-back parts "
            "and the best kept. The default with --calibration sources: 0.08."
        ),
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
    calibration: Annotated[
        list[str] | None,
        typer.Option(
            help="What the model serves, one source per option (repeat it): a text file, a local kind of text "
            "(pydoc, licenses, changelogs, messages) or a language (lang:de, lang:zh_CN, ...). Each is held back in "
            "part and measured; the band covers every source's tokens."
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="A `datasets` name whose text calibrates.")] = None,
    calibration_tokens: Annotated[
        int, typer.Option(help="Tokens of each source the model reads to calibrate (all are counted).")
    ] = 32768,
    measure: Annotated[
        list[str] | None,
        typer.Option(
            help="Sources not served, measured to show what was given up (repeat it; default with --calibration: "
            "the local English kinds and a few languages not served; 'none' for none)."
        ),
    ] = None,
    held_back: Annotated[float, typer.Option(help="Share of each served source held back to measure.")] = 0.2,
    band_share: Annotated[
        float | None, typer.Option(help="banded: share of the size spent on exact rows (default 0.3).")
    ] = None,
    tail: Annotated[
        str | None,
        typer.Option(
            help="banded: the rows outside the band as lowrank (default) or pq (product codes: every token "
            "keeps a row of its own, one byte per --tail-sub-dim values)."
        ),
    ] = None,
    tail_sub_dim: Annotated[int | None, typer.Option(help="--tail pq: values per code byte (default 8).")] = None,
    peers: Annotated[
        bool, typer.Option(help="Also measure int8 / int6 / int4 quantization of the dense embedding.")
    ] = False,
    eval_text: Files = None,
    eval_tokens: Annotated[int, typer.Option(help="Tokens of each measured text (512-token windows).")] = 2048,
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside MODEL, if it ships one.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    base_model_id: Annotated[
        str | None, typer.Option(help="The Hub name the card links to, when MODEL is a local folder.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Factorize MODEL's token embedding and output head; save a checkpoint that from_pretrained reloads."""
    from ..compress import compress as run_compress
    from ..compress import read_texts, summary_table
    from ..errors import FactorEmbedError

    if calibration and dataset:
        raise FactorEmbedError("give --calibration sources or --dataset, not both")
    if measure is not None and not calibration:
        raise FactorEmbedError("--measure goes with --calibration (the sources served)")
    result = run_compress(
        model,
        out,
        rank=rank,
        budget=budget,
        target=target,
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
        eval_texts={Path(f).stem: read_texts([f]) for f in eval_text or []},
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
