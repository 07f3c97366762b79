"""``compress``: a model name in, a factorized checkpoint folder out, with what it took and what it cost.

The command line's ``compress`` and the main job (``recipes/compress_smollm2.py``) are thin calls of
:func:`compress`. The folder holds the checkpoint (factors only), the tokenizer, ``compression.json`` (the patch
report, sizes, the evaluation if text was given, the command) and a model card (``README.md``) with plots when
matplotlib is installed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .arguments import check_model_name, check_writable_folder, embedding_shape, positive_int, read_text_file
from .errors import AlreadyPatchedError, FactorEmbedError
from .folders import check_output_dir, folder_bytes
from .loading import is_causal_lm, load_model
from .model_text import bos_prefix, describe_feed, special_token_ids
from .patch import patch_model
from .plan import BAND_SHARE, check_budget_fits, check_plan_arguments, check_target, chosen_candidate
from .sources import load_sources, unserved_defaults
from .structure import factorized_layers

logger = logging.getLogger(__name__)

COMPRESSION_FILE = "compression.json"
#: The byte budget ``compress`` plans for when served sources are given and no size is (8% of the fp32 bytes).
DEFAULT_MAX_BYTES = "0.08"


def read_texts(files: Sequence[str | Path] | None = None, dataset: str | None = None) -> str | None:
    """The text of plain-text files, or of a ``datasets`` name's ``text`` column; None when neither is given."""
    if files:
        return "\n\n".join(read_text_file(f) for f in files)
    if dataset:
        from .recovery.data import load_text

        return "\n\n".join(t for t in load_text(dataset=dataset)["text"] if t)
    return None


def compress(
    model_name: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    budget: float | None = None,
    target: float | None = None,
    max_bytes: str | float | None = None,
    method: str | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    band_bits: int | None = None,
    calibration: str | torch.Tensor | Mapping[str, str | torch.Tensor] | None = None,
    calibration_tokens: int = 32768,
    eval_texts: Mapping[str, str | torch.Tensor] | None = None,
    eval_tokens: int = 4096,
    serve: Sequence[str | Path] | None = None,
    measure: Sequence[str | Path] | None = None,
    held_back: float = 0.2,
    peers: bool | Sequence[str] = False,
    band_share: float | None = None,
    tail: str | None = None,
    tail_sub_dim: int | None = None,
    gguf_file: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    command: str | None = None,
    plots: bool = True,
    base_model_id: str | None = None,
    license: str | None = None,
) -> dict:
    """Factorize ``model_name`` and write the folder ``out``; returns what ``compression.json`` holds.

    ``calibration``: text or token ids (its first ``calibration_tokens`` tokens). ``eval_texts``: name -> text
    (or token ids), each measured before and after (perplexity for causal LMs; for encoders, the cosine agreement
    of mean-pooled sentence embeddings with the dense model's); the first ``eval_tokens`` tokens are used. Keep
    them apart from the calibration text, and give one of another kind too: quality on the calibration text's
    own kind says little about the rest. The saved folder is reloaded and checked (identical logits, tying).
    ``base_model_id``: the Hub name the card links to when ``model_name`` is a local folder; ``license``: the
    card's license (the base model's).

    ``serve``: what the model will serve, as named sources (:mod:`hf_factor_embed.sources`: files, local kinds of
    text, ``lang:<code>``), instead of ``calibration``. Each is split: its first ``held_back`` share is measured,
    the rest (its first ``calibration_tokens`` tokens) calibrates, each source weighted alike. ``measure``: sources
    not served, measured whole so the report shows what was given up (default: every local English kind and a few
    languages not served; ``[]`` for none); one far outside (> 2x dense) is a warning. ``peers``: measure int8 /
    int6 / int4 / asymmetric 4-bit quantization of the dense embedding on the same texts (causal LMs); True for
    all of :func:`hf_factor_embed.peers.quantization_peers`, or a list of their names.
    ``max_bytes``: instead of ``rank``, a byte budget for the embedding as stored: a share of its fp32 bytes (0.08)
    or a size ("40MB"). The plan (:mod:`hf_factor_embed.plan`) factorizes a candidate for each tail format that
    fits, measures each on the served sources' held-back parts and on the sources not served beside trimming at
    the same bytes, and keeps the best; ``compression.json`` lists them all. Needs ``serve``; ``bits`` defaults
    to 4 with it. With ``serve`` and none of ``rank``, ``budget``, ``target``, it is :data:`DEFAULT_MAX_BYTES`.
    ``target`` with ``serve`` (and none of the banded method's settings): the plan searches the smallest budget at
    which a candidate keeps every served source's held-back perplexity within ``target`` times dense's
    (:func:`hf_factor_embed.plan.run_target`); otherwise ``target`` searches the rank.
    ``band_share``: with the banded method, the share of the size spent on exact rows (default 0.3). ``tail``:
    what the rows outside the band are stored as, ``"lowrank"`` (default) or ``"pq"`` (a rank-16 basis plus product
    codes, one byte per ``tail_sub_dim`` values, default 8: :mod:`hf_factor_embed.factorize.product`).
    """
    sized = any(x is not None for x in (rank, budget, target, max_bytes))
    if not sized and serve is not None and method in (None, "banded"):
        max_bytes = DEFAULT_MAX_BYTES
    plan_spec = check_plan_arguments(max_bytes, serve, method, band_share, tail, tail_sub_dim, target)
    if plan_spec is not None and plan_spec[0] == "target":
        target = None  # the plan searches the budget; the rank search is for --rank's settings
    if plan_spec is not None and bits is None:
        bits = 4  # a budget in bytes is spent on integer factors
    options = dict(rank=rank, budget=budget, target=target, bits=bits, group_size=group_size, band_bits=band_bits)
    options["planned"] = plan_spec is not None
    options.update(held_back=held_back, calibration_tokens=calibration_tokens, eval_tokens=eval_tokens, dtype=dtype)
    banded = {
        k: v for k, v in (("band_share", band_share), ("tail", tail), ("tail_sub_dim", tail_sub_dim)) if v is not None
    }
    method = _check_arguments(model_name, out, method, banded, overwrite, **options)
    if serve is not None and calibration is not None:
        raise FactorEmbedError("give the served sources (serve=...) or calibration text, not both")
    served: dict[str, str] = {}  # served source -> where its text comes from
    origins: dict[str, str] = {}
    if serve is not None:  # read before the model loads: a missing file or language fails in a second
        calibration, served_evals, served, origins = _served_texts(serve, measure, held_back)
        clash = sorted(set(served_evals) & set(eval_texts or {}))
        if clash:
            raise FactorEmbedError(f"an evaluation text and a source share the name {clash[0]!r}; rename the file")
        eval_texts = {**served_evals, **(eval_texts or {})}
    _check_rank_fits(model_name, rank, gguf_file, method)
    if plan_spec is not None:
        check_budget_fits(plan_spec, embedding_shape(model_name, gguf_file), bits, group_size, band_bits)
    out = check_output_dir(out, overwrite=overwrite)
    model, tokenizer = load_model(model_name, gguf_file=gguf_file, dtype=dtype)
    if factorized_layers(model):
        raise AlreadyPatchedError(f"{model_name} is already factorized; give the dense model")
    if isinstance(calibration, Mapping):  # named sources: counted whole, the model reads calibration_tokens of each
        calibration = {n: _token_ids(t, tokenizer, "calibration") for n, t in calibration.items()}
    elif calibration is not None:
        calibration = _token_ids(calibration, tokenizer, "calibration")[:calibration_tokens]
    eval_texts = {name: _eval_ids(text, tokenizer, eval_tokens, model) for name, text in (eval_texts or {}).items()}
    dense_eval = {name: evaluate_text(model, tokenizer, text, eval_tokens) for name, text in eval_texts.items()}
    bos_id = bos_prefix(tokenizer)
    peer_results = None
    if peers and is_causal_lm(model):
        peer_results = _measure_peers(model, eval_texts, dense_eval, peers, bos_id)
    prompts = _prompts(eval_texts, tokenizer) if is_causal_lm(model) and tokenizer is not None else {}
    dense_continuations = _greedy(model, tokenizer, prompts)
    spectrum = _spectrum(model) if plots else None
    bytes_dense = _param_bytes(model)

    started = time.perf_counter()
    plan_record = None
    if plan_spec is not None:
        model, plan_record = _run_plan(
            model,
            tokenizer,
            plan_spec,
            calibration,
            calibration_tokens,
            eval_texts,
            dense_eval,
            eval_tokens,
            served,
            bits,
            group_size,
            band_bits,
        )
        size = {"target": plan_spec[1]} if plan_spec[0] == "target" else {"max_bytes": max_bytes}
        kept = chosen_candidate(plan_record)
        band_share, tail, tail_sub_dim = BAND_SHARE, kept["tail"], kept["tail_sub_dim"]
    else:
        size = {"rank": rank} if rank is not None else {"budget": budget} if budget is not None else {"target": target}
        patch_model(
            model,
            **size,
            method=method,
            calibration=calibration,
            tokenizer=tokenizer,
            model_tokens=calibration_tokens if isinstance(calibration, Mapping) else None,
            bits=bits,
            group_size=group_size,
            band_bits=band_bits,
        )
    seconds = time.perf_counter() - started
    report = model.factor_embed_report
    has_band = any(layer.dense_index is not None for layer in factorized_layers(model).values())
    special = special_token_ids(model, tokenizer) if has_band else torch.zeros(0, dtype=torch.long)
    result = {
        "base_model": str(model_name),
        "base_model_id": base_model_id,
        "license": license,
        "gguf_file": gguf_file,
        "dtype": dtype,
        "architecture": type(model).__name__,
        "requested": size,
        "bits": bits,
        "group_size": model.config.quantization_config.group_size,
        "band_bits": model.config.quantization_config.band_bits,
        "report": report.as_dict(),
        "calibration_tokens": _count_tokens(calibration),
        "fed_as": describe_feed(bos_id, tokenizer),
        "special_tokens_exact": (tokenizer.convert_ids_to_tokens(special.tolist()) if tokenizer else special.tolist()),
        "band_share": band_share,
        "tail": tail or "lowrank",
        "tail_sub_dim": tail_sub_dim if tail == "pq" else None,
        "param_bytes_dense": bytes_dense,
        "embedding_bytes": _embedding_bytes(model),
        "param_bytes_factorized": _param_bytes(model),
        "patch_seconds": round(seconds, 2),
        "command": command,
    }
    measured = chosen_candidate(plan_record)["perplexity"] if plan_record is not None else {}  # the plan measured it
    result["evaluation"] = {
        name: {
            **compare_to_dense(
                dense_eval[name],
                {"perplexity": measured[name]}
                if name in measured
                else evaluate_text(model, tokenizer, text, eval_tokens),
            ),
            **({"served": name in served, "origin": origins.get(name)} if serve is not None else {}),
        }
        for name, text in eval_texts.items()
    }
    result["continuations"] = _continuations(model, tokenizer, prompts, dense_continuations)
    result["served"] = served
    result["warnings"] = _warnings(result["evaluation"], served) if serve is not None else []
    if plan_record is not None and plan_record.get("target_met") is False:
        result["warnings"].append(
            f"--target {plan_record['target']:g} was not met at any budget searched: kept the largest, "
            f"{plan_record['budget_share']:.0%} of the fp32 embedding (worst served source "
            f"{plan_record['search'][-1]['worst_served']:.3f}x dense; behind trimming at equal bytes: "
            f"{', '.join(plan_record['search'][-1]['worse_than_trim']) or 'none'})"
        )
    if peer_results is not None:
        result["peers"] = peer_results
    if plan_record is not None:
        result["plan"] = plan_record
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    result["checkpoint_bytes"] = folder_bytes(out)
    result["reload"] = _check_reload(model, out)
    if spectrum is not None:
        result["plots"] = _plots(out, spectrum, report)
    (out / COMPRESSION_FILE).write_text(json.dumps(result, indent=2, default=str))
    from .hub.card import write_card

    write_card(out, result)
    return result


def _run_plan(
    model,
    tokenizer,
    spec,
    calibration,
    calibration_tokens,
    eval_texts,
    dense_eval,
    eval_tokens,
    served,
    bits,
    group_size,
    band_bits,
):
    """The plan (:mod:`.plan`) on ``model``: statistics gathered once, a factorized copy per candidate measured on
    every evaluation text beside trimming at the same bytes; returns (the chosen model, the plan's record)."""
    from .analysis import embedding_weights
    from .calibration import collect_source_stats
    from .factorize.banded import BandedMethod
    from .peers import TrimmedPeer
    from .plan import budget_bytes, run_plan, run_target

    if not is_causal_lm(model):
        raise FactorEmbedError(
            "--max-bytes measures perplexity on the served text: causal language models only; "
            "give --rank for this model"
        )
    fp32 = sum(w.numel() * 4 for w in embedding_weights(model).values())
    bos_id = bos_prefix(tokenizer)
    wanted = set(BandedMethod.uses) | {"token_counts"}
    stats, sources = collect_source_stats(
        model, calibration, statistics=wanted, model_tokens=calibration_tokens, bos_id=bos_id
    )
    special = special_token_ids(model, tokenizer)

    def patch(copy, candidate):
        patch_model(
            copy,
            rank=candidate.rank,
            method=candidate.method(),
            calibration=stats,
            tokenizer=tokenizer,
            bits=bits,
            group_size=group_size,
            band_bits=band_bits,
        )
        copy.factor_embed_report.sources = dict(sources)  # ready statistics carry no source names
        return copy

    def measure_trim(rows: int) -> dict[str, float]:
        trim = TrimmedPeer.ranked(stats, special, rows, tokenizer.unk_token_id)
        return {n: trim.perplexity(model, ids, dense_eval[n]["window"], bos_id=bos_id) for n, ids in eval_texts.items()}

    size = {"target": spec[1]} if spec[0] == "target" else {"budget": budget_bytes(spec, fp32)}
    return (run_target if spec[0] == "target" else run_plan)(
        model,
        **size,
        fp32_bytes=fp32,
        patch=patch,
        measure=lambda m: {
            n: evaluate_text(m, tokenizer, ids, eval_tokens)["perplexity"] for n, ids in eval_texts.items()
        },
        measure_trim=measure_trim,
        dense_perplexity={n: e["perplexity"] for n, e in dense_eval.items()},
        stored_bytes_of=lambda m: _embedding_bytes(m)["stored"],
        served=list(served),
        bits=bits,
        group_size=group_size,
        band_bits=band_bits,
        special_rows=int(special.numel()),
    )


#: Greedy continuations shown beside dense's in the report and the card: one prompt per measured text (its first
#: PROMPT_TOKENS tokens, held back or never calibrated on), NEW_TOKENS tokens each.
PROMPT_TOKENS, NEW_TOKENS = 12, 16


def _prompts(eval_texts: dict, tokenizer) -> dict[str, str]:
    """Prompt -> the measured text it comes from: the first words of its first line of prose (30 characters or
    more, mostly letters; catalogs open with date formats), else of the text."""
    out = {}
    for name, ids in eval_texts.items():
        lines = tokenizer.decode(ids[:400], skip_special_tokens=True).splitlines()
        prose = next((line.strip() for line in lines if _is_prose(line)), None)
        opening = tokenizer(prose, add_special_tokens=False).input_ids if prose else ids
        prompt = tokenizer.decode(opening[:PROMPT_TOKENS], skip_special_tokens=True).strip()
        if prompt and prompt not in out:
            out[prompt] = name
    return out


def _is_prose(line: str) -> bool:
    text = line.strip()
    return len(text) >= 30 and sum(c.isalpha() or c.isspace() for c in text) >= 0.8 * len(text)


def _greedy(model, tokenizer, prompts: dict[str, str]) -> list[list[int]]:
    from .continuations import greedy

    return greedy(model, tokenizer, list(prompts), NEW_TOKENS) if prompts else []


def _continuations(model, tokenizer, prompts: dict[str, str], dense: list[list[int]]) -> list[dict]:
    """What a user reads: each prompt's greedy continuation by the compressed model beside dense's."""
    from .continuations import compare

    return [row.as_dict() for row in compare(tokenizer, prompts, dense, _greedy(model, tokenizer, prompts))]


def _check_arguments(
    model_name,
    out,
    method,
    banded: dict,
    overwrite,
    *,
    rank,
    budget,
    target,
    planned,
    bits,
    group_size,
    band_bits,
    held_back,
    calibration_tokens,
    eval_tokens,
    dtype,
):
    """Every check that needs no model, before anything loads; returns the method to use (a configured
    ``BandedMethod`` for the banded method's settings ``banded``: band_share, tail, tail_sub_dim)."""
    from .factorize import get_method
    from .loading import DTYPES
    from .quantize import check_bits

    if sum(x is not None for x in (rank, budget, target)) + planned != 1:
        raise FactorEmbedError(
            "give exactly one of --rank, --budget, --target or --max-bytes (the plan, for served --calibration sources)"
        )
    positive_int("--rank", rank, optional=True)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 1):
        raise FactorEmbedError(f"--budget {budget!r} must be a share strictly between 0 and 1 (e.g. 0.3)")
    if target is not None:
        check_target(target)
    check_bits(bits, group_size)
    if band_bits is not None:
        if bits is None:
            raise FactorEmbedError("--band-bits needs --bits (the codes' precision); give both, or neither")
        check_bits(band_bits, None)
    positive_int("--calibration-tokens", calibration_tokens)
    positive_int("--eval-tokens", eval_tokens)
    if isinstance(held_back, bool) or not isinstance(held_back, (int, float)) or not 0 < held_back < 1:
        raise FactorEmbedError(f"--held-back {held_back!r} must be a share strictly between 0 and 1 (e.g. 0.2)")
    if dtype not in DTYPES:
        raise FactorEmbedError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if method is not None:
        get_method(method)  # an unknown name is one line, before the model loads
    if banded:
        from .factorize.banded import BandedMethod

        if method not in (None, "banded"):
            raise FactorEmbedError(f"{', '.join(banded)}: settings of the banded method, not of {method!r}")
        if "tail_sub_dim" in banded and banded.get("tail") != "pq":
            raise FactorEmbedError("--tail-sub-dim is a setting of the product-coded tail: add --tail pq")
        method = BandedMethod(**banded)
    check_model_name(model_name)
    check_output_dir(out, overwrite=overwrite)
    check_writable_folder(out)
    return method


def _check_rank_fits(model_name, rank: int | None, gguf_file: str | None, method=None) -> None:
    """A rank whose factors would be no smaller than the embedding is refused from the config alone (a second),
    not after the model loads."""
    shape = embedding_shape(model_name, gguf_file) if rank is not None else None
    if shape is None:
        return
    from .patch import check_rank

    v, d, _ = shape
    check_rank(rank, v, d)
    if getattr(method, "tail", None) == "pq":
        from .factorize.product import check_sub_dim

        check_sub_dim(method.tail_sub_dim, d)


def _token_ids(text: str | torch.Tensor, tokenizer, what: str) -> torch.Tensor:
    if isinstance(text, torch.Tensor):
        return text.reshape(-1).long()
    if tokenizer is None:
        raise FactorEmbedError(f"the model folder has no tokenizer, so {what} text cannot be read; add one")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise FactorEmbedError(f"the {what} text is empty; give a file with text in it")
    return ids


def evaluate_text(model, tokenizer, text: str | torch.Tensor, eval_tokens: int) -> dict:
    """What ``compress`` and ``hf-factor-embed eval`` measure on a text: for a causal LM its perplexity (with the
    tokens and window used), for an encoder its sentence embeddings (compared by :func:`compare_to_dense`)."""
    from .evaluation import perplexity, sentence_embeddings, sentences_of

    if is_causal_lm(model):
        ids = _token_ids(text, tokenizer, "evaluation")[:eval_tokens]
        window = min(512, ids.numel())
        if window < 16:
            raise FactorEmbedError("the evaluation text is too short; give at least a few hundred tokens")
        bos_id = bos_prefix(tokenizer)
        ppl = perplexity(model, ids, window=window, progress=True, bos_id=bos_id)
        return {"perplexity": ppl, "tokens": int(ids.numel()), "window": window, "bos_id": bos_id}
    sentences = sentences_of(text)
    if not sentences:
        raise FactorEmbedError("the evaluation text has no lines of 20 characters or more; give real sentences")
    return {"embeddings": sentence_embeddings(model, tokenizer, sentences)}


def compare_to_dense(dense: dict, factorized: dict) -> dict:
    from .evaluation import cosine_agreement

    if "perplexity" in dense:
        d, f = dense["perplexity"], factorized["perplexity"]
        return {"metric": "perplexity", "dense": round(d, 3), "factorized": round(f, 3), "ratio": round(f / d, 4)}
    return {
        "metric": "cosine agreement with the dense model's sentence embeddings",
        "dense": 1.0,
        "factorized": round(cosine_agreement(dense["embeddings"], factorized["embeddings"]), 4),
        "sentences": int(dense["embeddings"].shape[0]),
    }


@torch.no_grad()
def _check_reload(model, out: Path) -> dict:
    """Reload ``out`` the way users will and compare: the checkpoint must give the same outputs and tying."""
    reloaded = type(model).from_pretrained(out, dtype=next(model.parameters()).dtype).eval()
    probe = torch.arange(1, 65).remainder(model.get_input_embeddings().weight.shape[0])[None]
    first, second = model(input_ids=probe)[0], reloaded(input_ids=probe)[0]
    head, embedding = reloaded.get_output_embeddings(), reloaded.get_input_embeddings()
    return {
        "identical": bool(torch.equal(first, second)),
        "tied": head is not None and getattr(head, "weight", None) is getattr(embedding, "weight", 0),
        "factorized_layers": len(factorized_layers(reloaded)),
    }


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _spectrum(model) -> dict[str, list[float]]:
    """Singular values of each dense embedding matrix (a tied head once), before it is replaced."""
    from .analysis import embedding_weights, singular_values

    return {role: singular_values(weight).tolist() for role, weight in embedding_weights(model).items()}


def _plots(out: Path, spectrum: dict, report) -> list[str]:
    try:
        from .plots import spectrum_plot
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install 'hf-factor-embed[plots]')")
        return []
    ranks = {m.role: m.rank for m in report.modules}
    path = out / "spectrum.png"
    spectrum_plot(spectrum, path, ranks=ranks)
    return [path.name]


#: A source not served whose perplexity ratio passes this is a warning in the report and the card.
FAR_OUTSIDE = 2.0


def _served_texts(serve, measure, held_back: float):
    """(calibration part per served source, texts to measure, served source -> origin, every text's origin)."""
    if not serve:
        raise FactorEmbedError("serve=[] names nothing to serve; name at least one source (a file, pydoc, lang:de)")
    sources = load_sources(serve)
    others = unserved_defaults(s.name for s in sources) if measure is None else list(measure)
    measured = [m for m in load_sources(others) if m.name not in {s.name for s in sources}]
    calibration, evals = {}, {}
    for source in sources:
        calibration[source.name], evals[source.name] = source.split(held_back)
    evals.update({m.name: m.text for m in measured})
    origins = {s.name: s.origin for s in (*sources, *measured)}
    return calibration, evals, {s.name: s.origin for s in sources}, origins


def _eval_ids(text, tokenizer, eval_tokens: int, model):
    """Token ids of an evaluation text (its first ``eval_tokens``) for causal LMs; encoders read sentences."""
    if not is_causal_lm(model) or isinstance(text, torch.Tensor):
        return text
    return _token_ids(text[: 16 * eval_tokens], tokenizer, "evaluation")[:eval_tokens]


def _count_tokens(calibration) -> int:
    if calibration is None:
        return 0
    if isinstance(calibration, Mapping):
        return sum(int(ids.numel()) for ids in calibration.values())
    return int(calibration.numel())


def _warnings(evaluation: dict, served: dict) -> list[str]:
    """One line for each source not served that the compression puts far outside the dense model's quality."""
    out = []
    for name, e in evaluation.items():
        if name not in served and e.get("ratio", 1.0) > FAR_OUTSIDE:
            out.append(
                f"{name} (not served) is at {e['ratio']:.2f}x the dense perplexity: serve it (add it to the "
                f"calibration sources) or give a larger size (--max-bytes, --rank) if the model will see such text"
            )
            logger.warning("%s", out[-1])
    return out


def _measure_peers(model, eval_texts: dict, dense_eval: dict, names: bool | Sequence[str], bos_id=None) -> dict:
    """Quantizing the dense embedding instead: bytes and perplexity ratio per text, measured on the same windows."""
    from .analysis import embedding_weights
    from .peers import quantization_peers

    shapes = [tuple(w.shape) for w in embedding_weights(model).values()]
    chosen = quantization_peers()
    if names is not True:
        unknown = set(names) - {p.name for p in chosen}
        if unknown:
            raise FactorEmbedError(f"unknown peers {sorted(unknown)}; known: {[p.name for p in chosen]}")
        chosen = [p for p in chosen if p.name in names]
    results = {}
    for peer in chosen:
        ratios = {}
        for name, ids in eval_texts.items():
            window = dense_eval[name]["window"]
            ppl = peer.perplexity(model, ids, window, bos_id=bos_id)
            ratios[name] = round(ppl / dense_eval[name]["perplexity"], 4)
        results[peer.name] = {"embedding_bytes": sum(peer.stored_bytes(*s) for s in shapes), "ratio": ratios}
    return results


def _embedding_bytes(model) -> dict:
    """Bytes the factorized embeddings take as stored (integer factors at their bits, a tied pair once), and
    the dense fp32 bytes they replace."""
    from .layers import TAIL_CODE_TENSORS
    from .quantize import QUANTIZED_TENSORS, stored_bytes

    config = model.config.quantization_config
    stored, dense, seen = 0, 0, set()
    for layer in factorized_layers(model).values():
        if id(layer.weight) in seen:
            continue
        seen.add(id(layer.weight))
        dense += layer.weight.shape[0] * layer.basis.shape[1] * 4
        for name in (*QUANTIZED_TENSORS, "dense_index", *TAIL_CODE_TENSORS):
            tensor = getattr(layer, name, None)
            if tensor is None:
                continue
            shape, band = tuple(tensor.shape), layer.num_dense_rows
            stored += stored_bytes(config, name, shape, tensor.element_size(), band_rows=band)
    return {"stored": stored, "dense_fp32": dense, "share": round(stored / dense, 4) if dense else None}


def summary_table(result: dict) -> str:
    """What ``compress`` did, as the command line and the main job print it: parameters and embedding bytes, then
    one row per measured text (served or not) with the ratio to dense, and the quantization peers beside it."""
    report, stored = result["report"], result["embedding_bytes"]
    peers = result.get("peers") or {}
    b, a = report["model_params_before"], report["model_params_after"]
    lines = [
        f"method {report['method']}: model parameters {b:,} -> {a:,} ({a / b:.1%})",
        f"embedding bytes: fp32 {stored['dense_fp32']:,}; factorized {stored['stored']:,} ({stored['share']:.1%})"
        + "".join(
            f"; {n} {p['embedding_bytes']:,} ({p['embedding_bytes'] / stored['dense_fp32']:.1%})"
            for n, p in peers.items()
        ),
    ]
    if result.get("plan"):
        from .plan import describe

        lines.extend(describe(result["plan"]))
    if result.get("fed_as"):
        lines.append(f"perplexity of {result['fed_as']}")
    header = f"{'text':<16}{'served':<12}{'dense':>10}{'factorized':>12}{'ratio':>11}"
    lines.append(header + "".join(f"{name.split(' (')[0]:>12}" for name in peers))
    for name, e in result["evaluation"].items():
        served = "held back" if e.get("served") else ("no" if "served" in e else "")
        row = f"{name:<16}{served:<12}{_figure(e['dense']):>10}{_figure(e['factorized']):>12}"
        row += f"{_ratio(e.get('ratio')):>11}"
        row += "".join(f"{_ratio(p['ratio'][name]):>12}" for p in peers.values() if name in p["ratio"])
        lines.append(row)
    rows = result.get("continuations") or []
    if rows:
        same, bad = sum(r["identical"] for r in rows), [r["group"] for r in rows if r["degenerate"]]
        lines.append(
            f"greedy continuations ({NEW_TOKENS} tokens) of each text's first words: {same} of {len(rows)} identical "
            f"to dense's; degenerate: {', '.join(bad) if bad else 'none'}"
        )
    return "\n".join(lines)


def _figure(value: float) -> str:
    return f"{value:.3f}" if value < 1e5 else f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}x" if value < 1e3 else f"{value:.2g}x"
