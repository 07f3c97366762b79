"""``hf-factor-embed recover``: cheap refit or distillation of a factorized checkpoint towards its dense model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import FactorEmbedError
from . import app
from .options import output_path


@app.command(
    epilog=(
        "Examples:\n\n"
        "  hf-factor-embed recover out/smollm2-r128 --teacher HuggingFaceTB/SmolLM2-135M-Instruct "
        "--text notes.txt --mode cheap --out out/smollm2-r128-cheap\n\n"
        "  accelerate launch -m hf_factor_embed.cli recover out/student --teacher MODEL "
        "--dataset wikitext --mode distill --max-minutes 30 --out out/student-distilled"
    )
)
def recover(
    student_dir: Annotated[Path, typer.Argument(help="A factorized checkpoint (a folder saved by save_pretrained).")],
    teacher: Annotated[str, typer.Option(help="The dense model it came from: a folder or a Hub name.")],
    out: Annotated[str, typer.Option(help="Where to write the recovered checkpoint.")],
    text: Annotated[list[Path] | None, typer.Option(help="Plain-text training files (repeat the option).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="A `datasets` name with a `text` column, instead of --text.")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="cheap: refit the factors on cached teacher signals; distill: train.")
    ] = "cheap",
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside --teacher, if it ships one.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Use at most this many tokens of the text.")] = None,
    train: Annotated[
        str,
        typer.Option(
            help="What trains. distill: factors, lora or all; cheap: factors, or codebooks (a product-coded tail's "
            "centroids alone: the checkpoint's bytes stay)."
        ),
    ] = "factors",
    max_steps: Annotated[int, typer.Option(help="distill: optimizer steps at most.")] = 1000,
    lr: Annotated[float, typer.Option(help="distill: learning rate.")] = 1e-4,
    self_generate: Annotated[
        int | None,
        typer.Option(help="Also train on about N tokens of text the teacher writes itself (cached; see README)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Recover a factorized model's quality from its dense teacher on your text."""
    out = output_path(out)
    from ..recovery.run import recover as run_recover

    if text is not None and dataset is not None:
        raise FactorEmbedError("give --text FILE... or --dataset NAME, not both")
    if text is None and dataset is None and self_generate is None:
        raise FactorEmbedError("give --text FILE..., --dataset NAME or --self-generate N")
    summary = run_recover(
        student_dir,
        teacher,
        out,
        mode=mode,
        text_files=text,
        dataset=dataset,
        gguf_file=gguf_file,
        max_minutes=max_minutes,
        max_tokens=max_tokens,
        overwrite=overwrite,
        train=train,
        distill_config={"max_steps": max_steps, "lr": lr},
        self_generate=self_generate,
    )
    keys = ("mode", "steps", "seconds", "before", "after", "evaluations")
    typer.echo(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1, default=str))
    typer.echo(f"wrote {out}")
