"""A factorized decoder to an ExecuTorch program (``.pte``), through transformers' own recipe.

``transformers.integrations.executorch.TorchExportableModuleForDecoderOnlyLM`` wraps a causal LM with a static
key/value cache held as buffers (the signature of ExecuTorch's LLM runner: one token and its position in, its
logits out); ``torch.export`` traces it with the stored-factor layers swapped in (:mod:`.layers`, whose ops are
all core ATen), and ExecuTorch lowers what XNNPACK runs to its CPU kernels (``XnnpackPartitioner``); the rest runs on
the portable kernels. The cache holds ``max_length`` positions, prompt and continuation together.

The head's matmuls read the factors' matrices (the low-rank factors, the band, the exact columns) as the fp32 values
their integers stand for, and the token -> band slot map is a table (:func:`~.decoder.use_stored_factors`'s
``precomputed``; exact, so greedy tokens stay transformers'; the embedding still gathers the integers): XNNPACK's
matmuls take only float weights here (its integer kernels quantize the activations too), and ExecuTorch folds
nothing at load, so the portable kernels would dequantize the integers every step. On Gemma-3's main job that made
the shortlist head alone 305 ms a step against 87 ms with floats (dense's head: 28 ms; ``benchmarks/head_step.py``);
the file grows by the matrices' fp32 bytes. The product-coded tail's codes stay uint8.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROGRAM_FILE = "model.pte"
#: Positions the static cache holds by default (prompt + continuation).
MAX_LENGTH = 512


def export_executorch(model, out: Path, max_length: int = MAX_LENGTH) -> Path:
    """Write ``out/model.pte`` for ``model`` (a causal LM, stored-factor layers swapped in)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model.generation_config.cache_implementation = "static"
    module = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_length)
    with torch.no_grad():
        program = module.export(input_ids=torch.tensor([[0]]), cache_position=torch.tensor([0]))
    # As ExecuTorch's own LLM export configures it (extension/llm/export/builder.py): no edge-dialect IR validity
    # pass, a fifth of the lowering's time on SmolLM2; the written file is checked against transformers instead.
    config = EdgeCompileConfig(_check_ir_validity=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], compile_config=config)
    lowered = lowered.to_executorch()
    path = out / PROGRAM_FILE
    path.write_bytes(lowered.buffer)
    return path


class ExecuTorchDecoder:
    """ExecuTorch's Python runtime over a ``.pte`` :func:`export_executorch` wrote: greedy decoding, token by token."""

    def __init__(self, path: str | Path) -> None:
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(Path(path)).load_method("forward")

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        """``new_tokens`` greedy tokens after ``prompt_ids``; the prompt is fed one token at a time (the program's
        input is one token), so positions and cache are what the runner's would be."""
        tokens: list[int] = []
        for position, token in enumerate([*prompt_ids, *[None] * (new_tokens - 1)]):
            token = token if token is not None else tokens[-1]
            logits = self.method.execute([torch.tensor([[token]]), torch.tensor([position])])[0]
            if position >= len(prompt_ids) - 1:
                tokens.append(int(logits[0, -1].argmax()))
        return tokens
