"""``recover``: a saved factorized student, its dense teacher and some text in; a recovered checkpoint out.

The command line's ``recover`` and the recipes call this; it only loads, chooses and saves, the work is in
:mod:`.cheap` and :mod:`.distill`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..arguments import check_writable_folder, one_of, positive_int, positive_number
from ..errors import FactorEmbedError
from ..folders import (
    check_complete,
    check_not_input,
    check_output_dir,
    factorized_modules,
    is_factorized_checkpoint,
    read_config,
    staged_folder,
)
from ..models.bundled import resolve
from ..models.names import check_model_name
from .cheap import CheapRefitConfig, cheap_refit, collect_teacher_signals
from .data import load_text, pack_blocks, split_blocks
from .distill import DistillConfig, distill
from .generate import check_tokens
from .generate import self_generate as generate
from .trainable import FACTOR_TENSORS, TRAIN_MODES

logger = logging.getLogger(__name__)

MODES = ("cheap", "distill")
#: What a cheap refit may train (``--train``): every factor, or a product-coded tail's centroids alone (stored in
#: float, so the checkpoint's bytes and every other tensor stay; benchmarks/codebook_refit.py measures it).
CHEAP_TRAINS = {"factors": FACTOR_TENSORS, "codebooks": ("codebooks",)}
SUMMARY_FILE = "recovery.json"


def check_pair(student_dir: str | Path, teacher: str, gguf_file: str | None = None) -> None:
    """The user errors that configs alone reveal, before any weight loads: a student that is not factorized, a
    factorized teacher, vocabularies that differ."""
    from transformers import AutoConfig

    teacher = resolve(teacher)

    if not is_factorized_checkpoint(student_dir):
        raise FactorEmbedError(f"{student_dir} is not factorized; compress it first (hf_factor_embed.patch_model)")
    # A GGUF teacher's folder holds no config.json (the file is the model): only a saved folder can be factorized.
    if Path(teacher).is_dir() and gguf_file is None and is_factorized_checkpoint(teacher):
        raise FactorEmbedError(f"the teacher {teacher} is factorized; give the dense model the student came from")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    _check_same_vocabulary(AutoConfig.from_pretrained(student_dir), AutoConfig.from_pretrained(teacher, **kwargs))


def load_tokenizer(teacher: str, gguf_file: str | None = None):
    """The teacher's tokenizer (the student keeps the teacher's vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(teacher), **({"gguf_file": gguf_file} if gguf_file else {}))


def load_pair(student_dir: str | Path, teacher: str, gguf_file: str | None = None):
    """(student, teacher, tokenizer) in fp32, after :func:`check_pair`."""
    check_pair(student_dir, teacher, gguf_file)
    return (*load_models(student_dir, teacher, gguf_file), load_tokenizer(teacher, gguf_file))


def load_models(student_dir: str | Path, teacher: str, gguf_file: str | None = None):
    """(student, teacher) in fp32, once :func:`check_pair` has passed. Each read of a GGUF file parses all of
    its metadata (~10 s for SmolLM2's), so callers check, tokenize and load once each."""
    from transformers import AutoModelForCausalLM

    from ..quantizer.structure import factorized_layers

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    dense = AutoModelForCausalLM.from_pretrained(resolve(teacher), dtype=torch.float32, **kwargs)
    if factorized_layers(dense):
        raise FactorEmbedError(f"the teacher {teacher} is factorized; give the dense model the student came from")
    _check_same_vocabulary(student.config, dense.config, _vocab_size(student), _vocab_size(dense))
    return student, dense


def _vocab_size(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def _check_same_vocabulary(student_config, teacher_config, student_vocab=None, teacher_vocab=None) -> None:
    """From the configs first (before any weight loads), then from the loaded embeddings' rows."""
    student_vocab = student_vocab or getattr(student_config, "vocab_size", None)
    teacher_vocab = teacher_vocab or getattr(teacher_config, "vocab_size", None)
    if None not in (student_vocab, teacher_vocab) and student_vocab != teacher_vocab:
        raise FactorEmbedError(
            f"the student has {student_vocab} tokens and the teacher {teacher_vocab}: they do not share a vocabulary; "
            "give the dense model the student was compressed from"
        )


def recover(
    student_dir: str | Path,
    teacher: str,
    out: str | Path,
    *,
    mode: str = "cheap",
    text_files: Sequence[str | Path] | None = None,
    dataset: str | None = None,
    gguf_file: str | None = None,
    max_minutes: float | None = None,
    max_tokens: int | None = None,
    block_size: int = 256,
    overwrite: bool = False,
    train: str = "factors",
    distill_config: dict | None = None,
    self_generate: int | None = None,
) -> dict:
    """Recover ``student_dir`` towards ``teacher`` on the given text; write the result to ``out``.

    ``train``: what moves. ``mode="cheap"``: ``"factors"`` (A, B, the band and the tail's factors) or
    ``"codebooks"`` (a product-coded tail's centroids only); ``mode="distill"``: ``"factors"``, ``"lora"`` or
    ``"all"`` (:class:`.distill.DistillConfig`'s ``train``). ``distill_config``: the rest of that config's fields.

    ``self_generate``: about that many tokens of text the teacher writes itself (:mod:`.generate`, cached under
    ``$HF_FACTOR_EMBED_CACHE/selfgen``), alone or with the given text. Mixing rule: every generated token and every
    token of the given text train, in one stream, generated text first; the held-back blocks that measure the
    result are the last tenth of the *given* text (of the generated text when none is given), so evaluation is
    never on text the student trained on.
    """
    _check_arguments(mode, max_minutes, max_tokens, block_size, train, distill_config or {})
    if self_generate is None and text_files is None and dataset is None:
        raise FactorEmbedError("give text files, a dataset name or self_generate=N (or several of them)")
    if self_generate is not None:
        check_tokens(self_generate)
    check_model_name(teacher, "teacher")
    out = check_output_dir(out, overwrite=overwrite)
    check_not_input(out, [student_dir, teacher])
    check_complete(student_dir, "the student")
    check_writable_folder(out)
    check_pair(student_dir, teacher, gguf_file)
    if mode == "cheap" and train == "codebooks":
        _check_has_codebooks(student_dir)
    # The text is checked before the models load: an empty or too short text fails in a second.
    tokenizer = load_tokenizer(teacher, gguf_file)
    given = None
    if text_files is not None or dataset is not None:
        given = pack_blocks(load_text(text_files, dataset), tokenizer, block_size)
        if max_tokens is not None:
            given = given.select(range(min(len(given), max_tokens // block_size)))
    command = f"recover {student_dir} --teacher {teacher} --mode {mode} --out {out}"
    with staged_folder(out, overwrite=overwrite, inputs=[student_dir, teacher], command=command) as staging:
        student, dense = load_models(student_dir, teacher, gguf_file)
        blocks, held_back, generation = _training_blocks(given, dense, tokenizer, self_generate, block_size)
        if mode == "cheap":
            ids = blocks[:]["input_ids"].reshape(-1)
            signals = collect_teacher_signals(dense, ids, window=block_size)
            del dense  # the teacher's signals and dense matrices are kept; the network is not needed any more
            config = CheapRefitConfig(max_minutes=max_minutes, tensors=CHEAP_TRAINS[train])
            summary = cheap_refit(student, signals, config)
            summary["train"] = train  # what moved: recovery.json says so
            student.save_pretrained(staging)
        else:
            settings = {"output_dir": str(staging), "max_minutes": max_minutes, "train": train}
            config = DistillConfig(**settings, **(distill_config or {}))
            summary = distill(student, blocks, held_back, config, teacher=dense)
            summary["config"] = asdict(config) | {"output_dir": str(out)}
        summary.update(mode=mode, teacher=teacher, student=str(student_dir), train_blocks=len(blocks))
        summary.update(block_size=block_size, self_generated_tokens=self_generate or 0)
        if generation is not None:
            summary["self_generation"] = generation  # settings, seconds, tokens/s of the run that sampled it
        tokenizer.save_pretrained(staging)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _check_arguments(mode: str, max_minutes, max_tokens, block_size: int, train: str, distill_config: dict) -> None:
    """The settings' own checks, before anything loads."""
    one_of("--mode", mode, MODES)
    positive_number("--max-minutes", max_minutes, optional=True)
    positive_int("--max-tokens", max_tokens, optional=True)
    if max_tokens is not None and max_tokens < 2 * block_size:
        raise FactorEmbedError(
            f"--max-tokens {max_tokens} leaves fewer than two {block_size}-token blocks (one trains, one measures); "
            f"give at least {2 * block_size}"
        )
    one_of("--train", train, tuple(CHEAP_TRAINS) if mode == "cheap" else TRAIN_MODES)
    taken = sorted({"train", "output_dir", "max_minutes"} & set(distill_config))
    if taken:
        raise FactorEmbedError(f"distill_config: {taken[0]!r} is recover()'s own argument; pass it as {taken[0]}=")
    positive_int("--max-steps", distill_config.get("max_steps"), optional=True)
    positive_number("--lr", distill_config.get("lr"), optional=True)


def _check_has_codebooks(student_dir: str | Path) -> None:
    """``--train codebooks`` needs a product-coded tail: read from config.json, before any weight loads."""
    if not any(entry.get("tail_subvectors") for entry in factorized_modules(read_config(student_dir)).values()):
        raise FactorEmbedError(
            f"--train codebooks: {student_dir} has no product-coded tail (no codebooks to refit); use --train "
            "factors, or compress with --tail pq"
        )


def _training_blocks(given, teacher, tokenizer, self_generate: int | None, block_size: int):
    """(training blocks, held-back blocks, how the generated text was made or None) from the given text's blocks
    and/or the teacher's own text."""
    from datasets import concatenate_datasets

    from ..models.bundled import cache_dir

    generated = generation = None
    if self_generate:
        texts = generate(teacher, tokenizer, self_generate, cache_dir=cache_dir() / "selfgen")
        generation = json.loads(texts.info.description)
        generated = pack_blocks(texts, tokenizer, block_size)
    source = given if given is not None else generated
    train, held_back = split_blocks(source, max(1, len(source) // 10))
    if given is not None and generated is not None:
        train = concatenate_datasets([generated, train]).with_format("torch")
    return train, held_back, generation
