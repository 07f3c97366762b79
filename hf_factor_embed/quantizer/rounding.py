"""Integer storage for the factors: symmetric round-to-nearest with fp16 scales, per row or per group of columns.

``patch_model(..., bits=8 | 4, band_bits=8)`` rounds the factors (A at ``bits``; B and the band's rows at
``band_bits``; A's columns balanced against B's rows first, :func:`.storage.balance_factors`) to what they will be
stored as, so the model in memory is the model on disk; ``save_pretrained`` writes each as ``<name>_q`` (int8; two 4-bit
values per uint8) and ``<name>_scale`` (fp16), and ``from_pretrained`` turns them back into the float factors
(:mod:`.integration`). Training between the two (recovery) moves the float factors; saving rounds them again.

Why by hand and not torchao: torchao is not a dependency of transformers and its int4 layouts target linear
layers with CUDA / CPU kernels; here the factors are read back into float at load, so what is needed is only a
storage format, and safetensors holds plain integer tensors. The arithmetic is the same symmetric RTN that
llama.cpp's Q8_0 / Q4_0 and torchao's int8/int4 weight-only schemes use.
"""

from __future__ import annotations

import math

import torch

#: The float tensors of a factorized layer that are stored as integers when ``bits`` is set.
QUANTIZED_TENSORS = ("weight", "basis", "dense_rows")
#: A product-coded tail's exact outlier columns (V x c), int8 with one scale a row where ``tail_column_bits`` is set:
#: fp16 they were 8.4 MB of the Gemma-3 main job's 53.5 MB, int8 4.7 MB (the freed bytes buy the band ~5.5k rows).
#: They are held in float32 in memory: q * scale is exact there, not in fp16, so the model in memory stays the
#: model on disk.
TAIL_COLUMN_TENSOR = "tail_column_values"


#: A product-coded tail's tensors with a row per token that the band's rows never read; where ``tail_skips_band`` is
#: set the checkpoint holds only the rows outside the band (Gemma-3's main job at 8%: 3.7 MB of 53.6 MB).
BAND_SKIPPING_TENSORS = ("tail_codes", TAIL_COLUMN_TENSOR)


def stored_tensors(config) -> tuple[str, ...]:
    """The float tensors of a factorized layer that ``config`` stores as integers with scales."""
    if not config.bits:
        return ()
    return QUANTIZED_TENSORS + ((TAIL_COLUMN_TENSOR,) if getattr(config, "tail_column_bits", None) else ())


def held_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a stored tensor is held in once read back (float32 for the tail's columns, see above)."""
    return torch.float32 if name == TAIL_COLUMN_TENSOR else dtype


def _group(cols: int, group: int | None) -> int:
    return cols if group is None else min(group, cols)


def quantize(w: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers, fp16 scales (rows x groups)). The last group of a row may be partial (no padding is stored);
    4-bit values are packed two per byte, low nibble first."""
    rows, cols = w.shape
    g = _group(cols, group)
    groups = math.ceil(cols / g)
    padded = torch.nn.functional.pad(w.detach().float(), (0, groups * g - cols))  # zeros never raise a max
    blocks = padded.reshape(rows, groups, g)
    qmax = 2 ** (bits - 1) - 1
    # fp16 scales; an all-zero group (A's rows under the band are never read) gets the smallest one, not 0
    scale = (blocks.abs().amax(-1, keepdim=True) / qmax).half().clamp_min(torch.finfo(torch.float16).tiny)
    q = (blocks / scale.float()).round().clamp(-qmax - 1, qmax).to(torch.int8).reshape(rows, -1)[:, :cols]
    if bits == 4:
        nibbles = (torch.nn.functional.pad(q, (0, cols % 2)) + 8).to(torch.uint8)
        q = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return q.contiguous(), scale.squeeze(-1).contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, cols: int, group: int | None) -> torch.Tensor:
    """The float32 matrix (rows x cols) that :func:`quantize` stored."""
    rows = q.shape[0]
    if bits == 4:
        low, high = (q & 0xF).to(torch.int8) - 8, (q >> 4).to(torch.int8) - 8
        q = torch.stack([low, high], dim=-1).reshape(rows, -1)
    g = _group(cols, group)
    groups = scale.shape[1]
    scales = scale.float().unsqueeze(-1)
    if groups * g == cols and q.shape[1] == cols:
        # whole groups (every layout the plan writes): the integers promote to float32 inside the product, one
        # pass instead of a padded float copy and then the product; the same values to the bit
        return (q.reshape(rows, groups, g) * scales).reshape(rows, cols)
    values = torch.nn.functional.pad(q[:, :cols].float(), (0, groups * g - cols)).reshape(rows, groups, g)
    return (values * scales).reshape(rows, -1)[:, :cols]


def dequantize_column_major(
    q: torch.Tensor, scale: torch.Tensor, bits: int, cols: int, group: int | None, block_values: int = 1 << 17
) -> torch.Tensor:
    """:func:`dequantize` straight into the head's column-major layout (:func:`.layers.head_layout`): a block of
    rows at a time, so the full float matrix is written once instead of twice (dequantize, then transpose). Blocks
    hold about ``block_values`` values (512 KB of float32): a fixed row count made a narrow matrix's
    blocks so small that per-call overhead dominated (Gemma-3's 16-column A: 128 calls)."""
    rows = q.shape[0]
    block = max(1, block_values // max(cols, 1))
    out = torch.empty(cols, rows, dtype=torch.float32, device=q.device)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        out[:, start:stop] = dequantize(q[start:stop], scale[start:stop], bits, cols, group).t()
    return out.t()


def stored_shapes(rows: int, cols: int, bits: int, group: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of (integers, scales) for a rows x cols matrix: what the load path allocates before reading."""
    width = cols if bits == 8 else math.ceil(cols / 2)
    return (rows, width), (rows, math.ceil(cols / _group(cols, group)))


def stored_bytes(config, name: str, shape: tuple[int, ...], element_size: int, band_rows: int = 0) -> int:
    """Bytes a factorized layer's tensor ``name`` takes in a checkpoint written with ``config`` (a
    :class:`~hf_factor_embed.config.FactorEmbedConfig`): integer codes and fp16 scales for the quantized factors
    when ``config.bits`` is set, else ``element_size`` per value; the tail's rows outside a band of ``band_rows``
    where it skips the band. What ``compress`` reports and the plan budgets."""
    if name in BAND_SKIPPING_TENSORS and getattr(config, "tail_skips_band", False):
        shape = (shape[0] - band_rows, *shape[1:])
    if name in stored_tensors(config):
        bits, group = config.precision(name)
        (q_rows, q_cols), (s_rows, s_cols) = stored_shapes(*shape, bits, group)
        return q_rows * q_cols + 2 * s_rows * s_cols
    return math.prod(shape) * element_size


def stored_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits == 8 else torch.uint8


@torch.no_grad()
def round_in_place(tensor: torch.Tensor, bits: int, group: int | None, dtype: torch.dtype | None = None) -> None:
    """Replace ``tensor``'s values by what storing them with ``bits`` gives back, in place (its layout kept), or held
    in another ``dtype`` (its ``.data`` replaced: a Parameter keeps its identity, so ties still point at it)."""
    q, scale = quantize(tensor, bits, group)
    values = dequantize(q, scale, bits, tensor.shape[1], group)
    if dtype is None or dtype == tensor.dtype:
        tensor.copy_(values.to(tensor.dtype))
    else:
        tensor.data = values.to(dtype)
