"""The transformer body's linears quantized by each runtime's own quantizer, beside the factors' own integers.

The factorized embedding and head already hold integers (:mod:`.layers`); what stays float in an exported file is
the body: every ``nn.Linear`` of the attention and MLP blocks. ``--body`` hands those, and only those, to the tool
each runtime's users already quantize with:

- ONNX Runtime: ``onnxruntime.quantization``. ``int4`` is ``MatMulNBits`` at block 32 with a zero point a block
  (the quantizer's default, asymmetric: on Gemma-3-270M's body it kept held-back pydoc at KL divergence 0.29 from
  the fp32 file where symmetric blocks gave 0.53; HQQ 0.20, but a larger file and slower decoding); ``int8`` is
  ``quantize_dynamic`` (int8 weights per output channel, activations quantized per call:
  ``DynamicQuantizeLinear`` + ``MatMulInteger``).
- ExecuTorch: ``executorch.extension.llm.export.quantize.quantize_model_`` (torchao's ``quantize_`` with the configs
  ExecuTorch's LLM export uses): ``8da4w`` (int8 dynamic activations, int4 weights in groups of 32) for ``int4``,
  ``8da8w`` (int8 weights per channel) for ``int8``; XNNPACK lowers both to its quantized kernels.

The body's MatMuls are told apart in the ONNX graph by the module each node was traced from (torch's exporter
records it), not by shape or name, so a factor layer's matmul is never handed to a body quantizer.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from ..errors import FactorEmbedError

BODIES = ("fp32", "int8", "int4")
#: ExecuTorch's name for each body precision (``quantize_model_``'s ``qlinear_config``).
EXECUTORCH_CONFIG = {"int8": "8da8w", "int4": "8da4w"}
INT4_BLOCK = 32
#: The ONNX file's metadata entry naming its body's linear MatMuls (``,``-joined): what ``--body`` quantizes.
BODY_LINEARS = "hf_factor_embed.body_linears"
#: What the exporter records for each node: the classes of the modules it was traced from, outermost first.
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"
_LINEAR = "torch.nn.modules.linear.Linear"
#: Op types a quantized body leaves in the file, counted to say how many linears were quantized.
QUANTIZED_OPS = {"int8": "MatMulInteger", "int4": "MatMulNBits"}


def body_linear_nodes(ir_model) -> list[str]:
    """Names of the MatMul/Gemm nodes of an exported (onnx_ir) graph traced from an ``nn.Linear`` module: the body's
    linears (the factor layers are not ``nn.Linear``). Read before the exporter's metadata is cleared."""
    names = []
    for node in ir_model.graph.all_nodes():
        hierarchy = node.metadata_props.get(_CLASS_HIERARCHY, "")
        if node.op_type in ("MatMul", "Gemm") and _LINEAR in hierarchy:
            names.append(node.name)
    return names


def quantize_onnx_body(path: Path, body: str) -> int:
    """Quantize the body's MatMuls of the ONNX file ``path`` (:func:`.onnx.export_onnx` wrote it and named them in
    its metadata) in place to ``body`` ("int8" or "int4") with ONNX Runtime's own tools; returns how many linears
    the written file runs quantized (counted from the file, less the factors' own)."""
    import onnx

    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    constants = {i.name for i in model.graph.initializer}
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    # a linear whose weight is computed in the graph (a tied head reading Transpose(table)) is no weight to quantize
    nodes = [n for n in metadata.get(BODY_LINEARS, "").split(",") if n and weights.get(n) in constants]
    if not nodes:  # quantize_dynamic would read an empty list as "every MatMul"
        raise FactorEmbedError(f"{path} names no body linears in its metadata ({BODY_LINEARS}); export it again")
    # the factors' own 4-bit products may be MatMulNBits already (.layers.StoredMatrix's matmul_nbits)
    factor_ops = sum(node.op_type == QUANTIZED_OPS[body] for node in model.graph.node)
    with _quiet():
        if body == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            # its nodes_to_include adds to the op types it quantizes; excluding every other node is what limits it
            body_nodes = set(nodes)
            others = [node.name for node in model.graph.node if node.name not in body_nodes]
            quantizer = MatMulNBitsQuantizer(model, block_size=INT4_BLOCK, is_symmetric=False, nodes_to_exclude=others)
            quantizer.process()
            quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(  # the model already read: the file is read once
                model, path, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                weight_type=QuantType.QInt8, per_channel=True,
            )  # fmt: skip
    return count_ops(path, QUANTIZED_OPS[body]) - factor_ops


def count_ops(path: Path, op_type: str) -> int:
    import onnx

    return sum(node.op_type == op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def quantize_torch_body(model, body: str) -> int:
    """Quantize ``model``'s body linears in place as ExecuTorch's LLM export does (``8da8w`` / ``8da4w``); the
    factor layers are not ``nn.Linear`` and are left as they are. Returns how many linears were quantized."""
    import torch
    from executorch.extension.llm.export.quantize import quantize_model_

    with _quiet():  # it prints a line per config and warns that it is experimental
        quantize_model_(model, qlinear_config=EXECUTORCH_CONFIG[body], skip_incompatible_shapes=True)
    # torchao swaps a quantized linear's weight for a tensor subclass holding the integers
    plain = (torch.nn.Parameter, torch.Tensor)
    return sum(isinstance(m, torch.nn.Linear) and type(m.weight) not in plain for m in model.modules())


@contextlib.contextmanager
def _quiet():
    """The quantizers' progress: prints, warnings, a log line per node and advice (ONNX Runtime's logging)."""
    import logging
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # quantize_dynamic advises pre-processing on the root logger
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
