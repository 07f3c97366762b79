"""``hf-factor-embed eval``: perplexity of a causal LM, or an encoder's agreement with a dense reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app


@app.command(
    name="eval",
    epilog=(
        "Examples:\n\n"
        "  hf-factor-embed eval out/smollm2-r256 --text held_back.txt --compare HuggingFaceTB/SmolLM2-135M-Instruct"
        "\n\n  hf-factor-embed eval out/minilm-r64 --text sentences.txt "
        "--reference sentence-transformers/all-MiniLM-L6-v2"
    ),
)
def evaluate(
    model: Annotated[str, typer.Argument(help="A model folder (factorized or not) or a Hub name.")],
    text: Annotated[list[Path] | None, typer.Option(help="Plain-text files (repeat the option).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="A `datasets` name with a text column, instead of --text.")
    ] = None,
    compare: Annotated[str | None, typer.Option(help="A dense model to measure side by side.")] = None,
    reference: Annotated[
        str | None, typer.Option(help="Encoders: the dense model whose sentence embeddings are the reference.")
    ] = None,
    gguf_file: Annotated[str | None, typer.Option(help="The GGUF file inside --compare/--reference.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Causal LMs: evaluate the first N tokens.")] = 8192,
) -> None:
    """Measure MODEL on your text; with --compare, beside a dense model."""
    from ..calibration.model_text import describe_feed
    from ..calibration.sources import read_texts
    from ..errors import FactorEmbedError
    from ..measure.texts import compare_to_dense, evaluate_text, token_ids
    from ..models.load import is_causal_lm, load_model
    from ..models.names import check_model_name
    from ..options import check_window

    if (text is None) == (dataset is None):
        raise FactorEmbedError("give --text FILE... or --dataset NAME (one of them)")
    check_window("max_tokens", max_tokens)
    for name, option in ((model, "model"), (compare, "--compare model"), (reference, "--reference model")):
        if name is not None:
            check_model_name(name, option)
    _check_same_vocabulary(model, compare or reference, gguf_file)
    body = read_texts(text, dataset)
    subject, tokenizer = load_model(model)
    other_name = compare or reference
    if not is_causal_lm(subject) and other_name is None:
        raise FactorEmbedError("an encoder is measured against a dense model: add --reference DENSE_MODEL")
    other = load_model(other_name, gguf_file=gguf_file)[0] if other_name else None
    measured = evaluate_text(subject, tokenizer, body, max_tokens)
    if "perplexity" in measured:
        fed = describe_feed(measured["bos_id"], tokenizer)
        typer.echo(f"perplexity over {measured['tokens']} tokens ({measured['window']}-token windows; {fed})")
        typer.echo(f"  {model}: {measured['perplexity']:.3f}")
        if other is not None:
            typer.echo(f"  {other_name}: {evaluate_text(other, tokenizer, body, max_tokens)['perplexity']:.3f}")
            _echo_fidelity(other, subject, token_ids(body, tokenizer, "evaluation")[:max_tokens], measured, other_name)
        return
    agreement = compare_to_dense(evaluate_text(other, tokenizer, body, max_tokens), measured)
    typer.echo(
        f"cosine agreement with {other_name} over {agreement['sentences']} sentences: {agreement['factorized']:.4f}"
    )


def _check_same_vocabulary(model, other, gguf_file) -> None:
    """Two models measured on one tokenization read the same token ids: their vocabularies must be one size
    (another model's ids would pick unrelated rows and give a meaningless figure), read from their configs."""
    from ..errors import FactorEmbedError
    from ..models.names import embedding_shape

    if other is None:
        return
    ours, theirs = embedding_shape(model), embedding_shape(other, gguf_file)
    if ours is not None and theirs is not None and ours[0] != theirs[0]:
        raise FactorEmbedError(
            f"{model} has a vocabulary of {ours[0]:,} tokens and {other} one of {theirs[0]:,}: they read different "
            "token ids; compare a checkpoint with the dense model it came from"
        )


def _echo_fidelity(reference, model, ids, measured: dict, reference_name: str) -> None:
    """The quantization world's figures beside perplexity: KL divergence from the reference and same-top share,
    teacher-forced on the same windows (:mod:`hf_factor_embed.measure.fidelity`)."""
    from ..measure.fidelity import fidelity

    f = fidelity(reference, model, ids, measured["window"], measured["bos_id"])
    typer.echo(
        f"against {reference_name}, teacher-forced on the same windows: mean KL divergence {f.mean_kld:.4f} "
        f"(99th percentile {f.p99_kld:.4f}); same top token at {f.same_top:.1%} of {f.positions} positions"
    )
