"""A factorized decoder to an ONNX file, through torch's own exporter (``torch.onnx.export(..., dynamo=True)``).

Why torch's exporter and not optimum's: optimum's ONNX configs rebuild each architecture's inputs by name and run
the model as transformers builds it, with dense ``nn.Embedding`` / ``nn.Linear`` layers; a factorized layer would
have to be taught to every one of them. torch's exporter traces whatever modules the model holds, so the stored-
factor layers (:mod:`.layers`) go in as they are, integers included, and the file keeps optimum's input and output
names (``input_ids``, ``past_key_values.{i}.key``, ``logits``, ``present.{i}.key``), which ONNX Runtime's users
know (transformers.js reads them too; untested here).

The graph is then cleaned by onnxscript's optimizer with constant folding limited to small tensors, so no stored
integer matrix is folded into floats (the default folds inputs up to 8,192 values: a small model's factors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .body import BODY_LINEARS, body_linear_nodes
from .decoder import CachedDecoder, HiddenStates, cache_shape

#: Values up to which the optimizer may fold constants: shapes and index tables, never a stored matrix; and the
#: largest result it may store folded, so that a vocabulary-long table computed from the factors (the band's slots,
#: the codes' rows) stays a few nodes in the file (ONNX Runtime folds it at load: Gemma-3, 2.1 MB of file each).
_FOLD_LIMIT = 64
_FOLDED_LIMIT = 4096
MODEL_FILE = "model.onnx"


def export_onnx(model, out: Path, kind: str = "decoder") -> Path:
    """Write ``out/model.onnx`` for ``model``, whose factorized layers were swapped for stored-factor ones
    (:func:`.decoder.use_stored_factors`). ``kind`` "decoder": a causal LM with its cache (batch, new tokens and
    past length dynamic); "encoder": ``(input_ids, attention_mask) -> last_hidden_state`` (batch and length dynamic).
    """
    import onnxscript

    module, args, dynamic = _decoder_graph(model) if kind == "decoder" else _encoder_graph(model)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            input_names=module.input_names(),
            output_names=module.output_names(),
            dynamic_shapes=dynamic,
            dynamo=True,
            optimize=False,
            verbose=False,
        )
    program.model = onnxscript.optimizer.optimize(
        program.model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLDED_LIMIT
    )
    program.model.metadata_props[BODY_LINEARS] = ",".join(body_linear_nodes(program.model))
    for node in program.model.graph.all_nodes():  # the exporter's per-node stack traces: megabytes, no use
        node.metadata_props.clear()
    path = out / MODEL_FILE
    # One file while under protobuf's 2 GB limit (a factorized small model always is); external data beyond.
    program.save(path, external_data=_parameter_bytes(model) > 1.8e9)
    return path


def _decoder_graph(model):
    decoder = CachedDecoder(model).eval()
    layers, heads, head_dim = cache_shape(model.config)
    # Examples above 1 everywhere: torch.export specializes sizes 0 and 1, and every size here must stay free.
    input_ids = torch.arange(3).repeat(2, 1)
    past = tuple(torch.zeros(2, heads, 2, head_dim) for _ in range(2 * layers))
    batch, sequence, past_sequence = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence"))
    dynamic = ({0: batch, 1: sequence}, tuple({0: batch, 2: past_sequence} for _ in past))
    return decoder, (input_ids, *past), dynamic


def _encoder_graph(model):
    encoder = HiddenStates(model).eval()
    input_ids = torch.arange(1, 4).repeat(2, 1)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {0: batch, 1: sequence}
    return encoder, (input_ids, torch.ones_like(input_ids)), (dims, dims)


def _parameter_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
