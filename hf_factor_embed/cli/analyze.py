"""``hf-factor-embed analyze``: spectra, error per rank, a PCA view and a suggested rank, as PNGs and JSON."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer

from . import INSTALL_HINTS, app
from .options import output_path


@app.command(
    epilog=(
        "Example:\n\n  hf-factor-embed analyze HuggingFaceTB/SmolLM2-135M-Instruct --calibration notes.txt "
        "--budget 0.3 --out out/smollm2-analysis"
    )
)
def analyze(
    model: Annotated[str, typer.Argument(help="A dense model folder or a Hub name.")],
    out: Annotated[str, typer.Option(help="Where to write the PNG plots and summary.json.")],
    calibration: Annotated[list[Path] | None, typer.Option(help="Text whose token counts weight the rows.")] = None,
    dataset: Annotated[str | None, typer.Option(help="A `datasets` name, instead of --calibration.")] = None,
    budget: Annotated[float, typer.Option(help="Share of each matrix's parameters to keep, for the rank.")] = 0.3,
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside MODEL, if it ships one.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Show how much of each embedding a rank keeps, and suggest the rank for --budget."""
    out = output_path(out)
    import torch
    from tqdm.auto import tqdm

    from ..arguments import check_writable_folder
    from ..calibration.sources import read_texts
    from ..errors import FactorEmbedError
    from ..folders import check_output_dir, is_factorized_checkpoint
    from ..measure.analysis import analyze_weight, embedding_weights
    from ..models.load import load_model
    from ..models.names import check_model_name
    from ..options import check_share
    from ..quantizer.structure import factorized_layers

    try:
        plots = importlib.import_module("hf_factor_embed.measure.plots")
    except ImportError:  # the numbers stand without the pictures, as in compress
        plots = None
        typer.echo(f"matplotlib is not installed: no PNGs, only summary.json ({INSTALL_HINTS['matplotlib']})", err=True)

    check_share("budget", budget)
    if calibration and dataset:
        raise FactorEmbedError("give --calibration files or --dataset, not both")
    out = check_output_dir(out, overwrite=overwrite)
    check_writable_folder(out)
    check_model_name(model)
    if Path(model, "config.json").is_file() and is_factorized_checkpoint(model):
        raise FactorEmbedError(f"{model} is factorized; analyze the dense model it came from")
    text = read_texts(calibration, dataset)  # before the model loads: a missing or binary file fails at once
    dense, tokenizer = load_model(model, gguf_file=gguf_file)
    if factorized_layers(dense):
        raise FactorEmbedError(f"{model} is factorized; analyze the dense model it came from")
    counts = None
    if text is not None:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
        counts = torch.bincount(ids, minlength=dense.get_input_embeddings().weight.shape[0]).double()
    analyses = [
        analyze_weight(role, weight, counts[: weight.shape[0]] if counts is not None else None)
        for role, weight in tqdm(embedding_weights(dense).items(), desc="analyze")
    ]
    out.mkdir(parents=True, exist_ok=True)
    summaries = [a.summary(budget) for a in analyses]
    if plots is not None:
        _draw(plots, analyses, summaries, out)
    _write_summary(out, model, budget, counts, analyses, summaries)
    typer.echo(f"wrote {out} ({'spectrum.png, error_*.png, pca_*.png, ' if plots else ''}summary.json)")


def _write_summary(out: Path, model: str, budget: float, counts, analyses, summaries) -> None:
    """``summary.json`` (each embedding's spectrum and errors by rank) and the lines the command prints."""
    full = {"model": model, "budget": budget, "calibration_tokens": int(counts.sum()) if counts is not None else 0}
    full["embeddings"] = [
        {
            **s,
            "singular_values": a.singular_values,
            "relative_error": a.relative_error,
            "weighted_error": a.weighted_error,
        }
        for a, s in zip(analyses, summaries, strict=True)
    ]
    (out / "summary.json").write_text(json.dumps(full, indent=1))
    for s in summaries:
        b = s["budget"]
        energy = ", ".join(f"{float(k):.0%}: r={v}" for k, v in s["rank_for_energy"].items())
        typer.echo(f"{s['role']} {s['shape'][0]} x {s['shape'][1]}: rank for energy kept {energy}")
        typer.echo(
            f"  budget {budget:.0%}: rank {b['rank']}, energy kept {b['energy_kept']:.1%}, "
            f"relative error {b['relative_error']:.3f}"
        )


def _draw(plots, analyses, summaries, out: Path) -> None:
    plots.spectrum_plot(
        {a.role: a.singular_values for a in analyses},
        out / "spectrum.png",
        ranks={s["role"]: s["budget"]["rank"] for s in summaries},
    )
    for a, s in zip(analyses, summaries, strict=True):
        curves = {"plain SVD": a.relative_error}
        if a.weighted_error is not None:
            curves["rows weighted by calibration counts"] = a.weighted_error
        plots.error_plot(curves, out / f"error_{a.role}.png", budget_rank=s["budget"]["rank"])
        plots.pca_plot(a.pca, out / f"pca_{a.role}.png", a.frequency, title=f"{a.role} rows, top two directions")
