"""What an exported file holds for each runtime and how its graph reads the factors: the one place the runtimes
differ. Everything else the export writes (the stored integers, the shortlist's two stages, the cache interface) is
the same for ONNX Runtime and ExecuTorch, and each choice below was measured on the runtime it is made for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How a step reads the product codes' lookup tables (:func:`~hf_factor_embed.layers.factorized.shortlist_tail_logits`).
Lookups = Literal["gather", "flat"]


@dataclass(frozen=True)
class RuntimeLayout:
    """How the stored-factor layers (:mod:`.layers`) lay out the factors for one runtime.

    ``precomputed``: what the graph would compute from constants every call is held ready, for a runtime that
    folds nothing at load (ExecuTorch; ONNX Runtime folds constants itself): the matrices' fp32 values beside
    their integers for the products, the token -> band slot map as a table, every row's codes.

    ``matmul_nbits``: 4-bit matrices in whole power-of-two blocks are held in ONNX Runtime's ``MatMulNBits``
    layout and multiplied by that op, instead of a float matrix the runtime folds from the integers at load.

    ``lookups``: ``"gather"`` reads ``tables[codes[t, s], s]`` with a gather along the centroids (ONNX Runtime:
    6.5x faster than flat offsets on Gemma-3's 16,384 x 128 listed codes); ``"flat"`` adds each code to its
    subspace's offset into the flattened tables and reads them with one ``index_select`` (ExecuTorch's portable
    kernels: the gather and its int64 index cost 79 ms a head step on Gemma-3, flat int32 offsets 55 ms).

    ``offset_codes``: a shortlist head's codes are held as int32 flat offsets ready (code + subspace x centroids) in
    place of the uint8 codes, split after the first stage, so no step casts 2.9M codes to an index (ExecuTorch's
    portable cast: about 10 ns an element). Gemma-3's head step in ExecuTorch: 55.1 ms with the codes cast, 33.2
    with the first stage's offsets held, 26.2 with all of them (dense's head: 23-24; ``benchmarks/head_step.py``),
    for a file 4x the codes' bytes (262,144 x 128: 33.5 -> 134.2 MB).

    ``paired_codes``: with ``offset_codes``, the first stage reads two subspaces a lookup, from pair tables built
    each step (:class:`~hf_factor_embed.layers.lookups.HeldOffsets`): half its lookups and half its offsets'
    bytes, for K^2 additions a pair that XNNPACK runs. (Wherever offsets are held, each stage's entries are summed
    by a product with ones: the portable ``mm`` is faster than its ``sum``.) Gemma-3's first stage alone (65,536
    tokens x 32 subspaces): 11.0 -> 6.7 ms; the head step 26.2 -> 22.2 ms, dense's 21.1 in the same run; the file
    301.2 -> 284.4 MB with the int4 body. Pairing the second stage too read 12.6 MB of tables at random: 30.6 ms.
    ONNX Runtime does not pair: its first stage took 4.4-4.8 ms as it reads it, 5.2-5.9 with pair tables.
    """

    name: str
    precomputed: bool = False
    matmul_nbits: bool = False
    lookups: Lookups = "gather"
    offset_codes: bool = False
    paired_codes: bool = False


#: The layout a stored-factor model has when no runtime is named (tests, ``torch.export`` by hand).
PLAIN = RuntimeLayout("plain")
#: ``export --format`` -> its layout.
RUNTIMES = {
    "onnx": RuntimeLayout("onnx", matmul_nbits=True),
    "executorch": RuntimeLayout("executorch", precomputed=True, lookups="flat", offset_codes=True, paired_codes=True),
}
