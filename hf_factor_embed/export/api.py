"""``export(folder, out, format=...)``: check, load, record transformers' answers, swap in stored factors, write,
check the written file against those answers, report."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..arguments import check_writable_folder, one_of
from ..config import OUTPUT
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
from .body import BODIES
from .head import HeadChoice, parse_head

FORMATS = ("onnx", "executorch")
#: Modules each format needs -> the line that installs them.
_NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "executorch": ("executorch",)}
INSTALL = {"onnx": 'pip install "hf-factor-embed[export]"', "executorch": 'pip install "hf-factor-embed[executorch]"'}
#: Prompts the written file is checked on: greedy tokens must match transformers' (decoders); hidden states must
#: agree (encoders). Short, so the check costs seconds.
CHECK_PROMPTS = ("The capital of France is", "def add(a, b):\n    return")
CHECK_TOKENS = 8
REPORT_FILE = "export.json"
#: Files of the checkpoint folder copied beside the exported model (tokenizer, configs, the card).
_BESIDE = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.txt",
    "chat_template.jinja",
    "README.md",
)


@dataclass
class ExportReport:
    """What :func:`export` wrote and how it was checked."""

    format: str
    file: str
    kind: str  # "decoder" (greedy-checked) or "encoder" (hidden states checked)
    file_bytes: int
    embedding_bytes: int  # the stored factors in the file
    checkpoint_embedding_bytes: int  # the same factors in the checkpoint's safetensors
    checked_prompts: int
    identical: bool  # the factors' check: greedy tokens (or hidden states) of the file = transformers', same body
    max_abs_difference: float | None
    seconds: float
    body: str = "fp32"
    head: str = "full"  # "full", or "shortlist:k" (:mod:`.head`)
    quantized_linears: int = 0  # body linears the file runs quantized (counted from the file or the program)
    body_agreement: float | None = None  # quantized body: share of greedy tokens in common with the fp32 body's
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        same = "identical to" if self.identical else "differ from"
        check = (
            f"greedy tokens {same} transformers' on {self.checked_prompts} prompts"
            if self.kind == "decoder"
            else f"hidden states within {self.max_abs_difference:.1e} of transformers'"
        )
        if self.head != "full":
            check += f"; head {self.head}"
        if self.body != "fp32":
            check += (
                f"; body {self.body}: {self.quantized_linears} linears quantized, "
                f"{self.body_agreement:.0%} of greedy tokens as the fp32 body's"
            )
        return (
            f"wrote {self.file} ({self.file_bytes / 1e6:.1f} MB; "
            f"embedding factors {self.embedding_bytes / 1e6:.1f} MB, "
            f"the checkpoint's {self.checkpoint_embedding_bytes / 1e6:.1f} MB); {check}; {self.seconds:.0f} s"
        )


def export(
    folder: str | Path,
    out: str | Path,
    *,
    format: str = "onnx",
    body: str = "fp32",
    head: str | HeadChoice = "full",
    overwrite: bool = False,
    prompts: Sequence[str] = CHECK_PROMPTS,
) -> ExportReport:
    """Export the factorized checkpoint ``folder`` to ``out`` (a new folder) in ``format`` and check it on
    ``prompts`` (fed as the tokenizer feeds them): greedy tokens for a decoder, hidden states for an encoder.

    ``body`` "int8" or "int4" quantizes the transformer body's linears with the runtime's own quantizer
    (:mod:`.body`); the factors keep their own integers. The factors are checked against transformers on the same
    body: for ONNX on the file before its body is quantized, for ExecuTorch against transformers running the same
    torchao-quantized body. ``body_agreement`` then says how far the quantized file's greedy tokens follow the
    fp32 body's (a quantized body changes numerics: reported, never refused).

    Raises :class:`FactorEmbedError` before anything loads for a folder that is not a factorized checkpoint, an
    unknown format, an unwritable ``out`` or a missing extra; after writing, when the file disagrees with
    transformers (the folder is then left with the file and ``export.json`` saying so, for a bug report).
    """
    started = time.perf_counter()
    folder, out = Path(folder), Path(out)
    kind = check_export(folder, out, format=format, body=body, head=head, overwrite=overwrite)
    head = parse_head(head)
    from ..models.load import load_model
    from ..quantizer.structure import factorized_layers
    from .body import quantize_onnx_body, quantize_torch_body
    from .decoder import use_stored_factors
    from .target import RUNTIMES

    model, tokenizer = load_model(folder)
    reference = fp32_reference = _reference(model, tokenizer, kind, prompts)
    modules = list(factorized_layers(model))
    use_stored_factors(model, head.shortlist, RUNTIMES[format])
    quantized = 0
    if body != "fp32" and format == "executorch":  # quantized before tracing; the reference runs the same body
        quantized = quantize_torch_body(model, body)
        reference = _reference(model, tokenizer, kind, prompts)
    command = f"export {folder} --out {out}"
    with staged_folder(out, overwrite=overwrite, inputs=[folder], command=command) as staging:
        path = _write(model, staging, format, kind)
        for name in _BESIDE:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staging / name)
        identical, difference, tokens = _check(path, tokenizer, kind, prompts, reference)
        notes = []
        if not identical and body != "fp32":  # XNNPACK's quantized kernels round apart from torchao's eager ones
            notes.append(f"greedy tokens differ from transformers running the same {body} body (near-ties)")
        if body != "fp32" and format == "onnx":  # the factors were checked above, on the fp32 body
            quantized = quantize_onnx_body(path, body)
            tokens = _file_greedy(path, tokenizer, prompts)  # the file changed: decode it again
        agreement = None if body == "fp32" else _agreement(tokens, fp32_reference)
        report = ExportReport(
            format=format,
            file=str(out / path.relative_to(staging)),
            kind=kind,
            file_bytes=path.stat().st_size,
            embedding_bytes=_factor_bytes(model),
            checkpoint_embedding_bytes=_checkpoint_factor_bytes(folder, modules),
            checked_prompts=len(prompts),
            identical=identical,
            max_abs_difference=difference,
            seconds=time.perf_counter() - started,
            body=body,
            head=str(head),
            quantized_linears=quantized,
            body_agreement=agreement,
            notes=notes,
        )
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not identical and (body == "fp32" or format == "onnx"):
        if head.shortlist is not None:  # measured, not proven: a list too short for these prompts
            raise FactorEmbedError(
                f"the --head {head} file's greedy tokens differ from the full head's (see {out / REPORT_FILE}): "
                "the full head's token was not in the shortlist; export with a longer one (e.g. shortlist:65536)"
            )
        raise FactorEmbedError(
            f"the exported file disagrees with transformers (see {out / REPORT_FILE}); please report it"
        )
    return report


def check_export(
    folder: Path,
    out: Path,
    *,
    format: str,
    body: str = "fp32",
    head: str | HeadChoice = "full",
    overwrite: bool = False,
) -> str:
    """Every check that needs no weights; returns the kind of graph ("decoder" or "encoder")."""
    one_of("--format", format, FORMATS)
    one_of("--body", body, BODIES)
    head = parse_head(head)
    if not is_factorized_checkpoint(folder):
        raise FactorEmbedError(
            f"{folder} is a dense checkpoint; export exports factorized ones (run hf-factor-embed compress first)"
        )
    config = read_config(folder)
    kind = "decoder" if any(a.endswith("ForCausalLM") for a in config.get("architectures") or []) else "encoder"
    if kind == "encoder" and format == "executorch":
        raise FactorEmbedError(
            f"{folder} is an encoder ({config.get('model_type')}); --format executorch exports decoders (causal "
            "LMs) with their cache; export an encoder with --format onnx"
        )
    if body != "fp32" and kind == "encoder":
        raise FactorEmbedError(
            f"--body {body} quantizes a decoder's body; {folder} is an encoder: export it with --body fp32"
        )
    if head.shortlist is not None:
        _check_shortlist(folder, config, kind, head)
    check_format(format)
    check_complete(folder, "the checkpoint")
    check_output_dir(out, overwrite=overwrite)
    check_not_input(out, [folder])
    check_writable_folder(out)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FactorEmbedError(
            f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); the export is checked on text and "
            "ships one: save the tokenizer beside the checkpoint (tokenizer.save_pretrained)"
        )
    return kind


def _check_shortlist(folder: Path, config: dict, kind: str, head: HeadChoice) -> None:
    """A shortlist head needs a decoder whose head is factorized with a product-coded tail."""
    output = factorized_modules(config).get(OUTPUT) or {}
    if kind == "encoder" or not output:
        raise FactorEmbedError(
            f"--head {head} shortlists a factorized output head; {folder} has none ({config.get('model_type')}): "
            "export it with --head full"
        )
    if not output.get("tail_subvectors"):
        raise FactorEmbedError(
            f"--head {head} reads a product-coded tail; {folder}'s head has a low-rank tail, which is already "
            "cheap to read whole: export it with --head full"
        )


#: Any of these makes a folder's tokenizer loadable.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def check_format(format: str, option: str = "--format") -> None:
    """A known format whose libraries are installed (checked before a long job, not after it)."""
    one_of(option, format, FORMATS)
    missing = [module for module in _NEEDS[format] if importlib.util.find_spec(module) is None]
    if missing:
        raise FactorEmbedError(f"{format} export needs {', '.join(missing)}; {INSTALL[format]}")


def _reference(model, tokenizer, kind: str, prompts: Sequence[str]):
    import torch

    from ..measure.continuations import greedy

    if kind == "decoder":
        return greedy(model, tokenizer, list(prompts), CHECK_TOKENS)
    with torch.no_grad():
        return [model.base_model(**tokenizer(p, return_tensors="pt")).last_hidden_state for p in prompts]


def _write(model, out: Path, format: str, kind: str) -> Path:
    if format == "executorch":
        from .executorch import export_executorch

        return export_executorch(model, out)
    from .onnx import export_onnx

    return export_onnx(model, out, kind)


def _file_greedy(path: Path, tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """The exported decoder's greedy tokens after each prompt, in its runtime."""
    if path.suffix == ".pte":
        from .executorch import ExecuTorchDecoder

        runtime = ExecuTorchDecoder(path)
    else:
        from .runtime import OnnxDecoder

        runtime = OnnxDecoder(path)
    return [runtime.greedy(tokenizer(p).input_ids, CHECK_TOKENS) for p in prompts]


def _check(path: Path, tokenizer, kind: str, prompts: Sequence[str], reference):
    """(whether the file does what transformers does, the hidden states' largest difference for an encoder, the
    file's greedy tokens for a decoder)."""
    from .runtime import OnnxEncoder

    if kind == "decoder":
        tokens = _file_greedy(path, tokenizer, prompts)
        return tokens == reference, None, tokens
    runtime = OnnxEncoder(path)
    difference = max(
        float(abs(runtime.hidden_states(tokenizer(p, return_tensors="np")) - ref.numpy()).max())
        for p, ref in zip(prompts, reference, strict=True)
    )
    return difference < 1e-3, difference, None


def _agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the file's greedy ``tokens`` that follow ``reference`` (each prompt's common prefix, over all)."""
    from ..measure.continuations import common_prefix

    return sum(common_prefix(a, b) for a, b in zip(tokens, reference, strict=True)) / (CHECK_TOKENS * len(tokens))


def _factor_bytes(model) -> int:
    from .layers import ExportedFactors

    tensors = {id(t): t for m in model.modules() if isinstance(m, ExportedFactors) for t in m.buffers()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _checkpoint_factor_bytes(folder: Path, modules: list[str]) -> int:
    """Bytes of the factorized modules' tensors in the checkpoint's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            for key in handle.keys():
                if any(key.startswith(module + ".") for module in modules):
                    tensor = handle.get_slice(key)
                    total += math.prod(tensor.get_shape()) * _ITEMSIZE[tensor.get_dtype()]
    return total


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
