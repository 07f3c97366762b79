"""Export-time stand-ins for the factorized layers: the factors kept as the checkpoint stores them.

In transformers the factors are float Parameters (read back from the checkpoint's integers at load). An exported
graph instead keeps the integers themselves (int8, or two 4-bit values per uint8, with fp16 scales) as initializers
and dequantizes what it reads: the embedding gathers its rows first and dequantizes only those; the head
dequantizes a matrix per call, inside the graph. So the file's embedding bytes are the checkpoint's, not the dense
model's. A tied pair shares its :class:`StoredMatrix` modules, so the exported file holds one copy.

The graph computes exactly what :class:`~hf_factor_embed.layers.factorized.FactorizedEmbedding` and
:class:`~hf_factor_embed.layers.factorized.FactorizedLMHead` compute (same float values, same order of the low-rank
part,
the tail's codes and the band), in plain tensor ops that ``torch.export`` traces and every runtime has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FactorEmbedConfig
from ..errors import FactorEmbedError
from ..layers.factorized import (
    SHORTLIST_PARTIAL,
    TAIL_CODE_TENSORS,
    FactorizedEmbedding,
    FactorizedLayer,
    FactorizedLMHead,
    band_slots,
    product_code_parts,
    shortlist_tail_logits,
)
from ..layers.lookups import HeldOffsets
from ..quantizer.rounding import TAIL_COLUMN_TENSOR, _group, dequantize, quantize
from ..quantizer.storage import outside_band_mask
from .target import PLAIN, RuntimeLayout


def nbits_layout_fits(bits: int, group: int, cols: int) -> bool:
    """Whether a matrix stored at ``bits`` in groups of ``group`` columns is, byte for byte, a ``MatMulNBits``
    weight (ONNX Runtime's contrib op: 4-bit values offset by 8, low nibble first, a power-of-two block of at least
    16 columns, whole blocks)."""
    return bits == 4 and group >= 16 and group & (group - 1) == 0 and cols % group == 0


class StoredMatrix(nn.Module):
    """A rows x cols float matrix held as stored: ``values`` (float), or integers ``q`` and fp16 ``scale``.

    ``matmul_nbits``: 4-bit integers are held as ONNX Runtime's ``MatMulNBits`` reads its weight (where
    :func:`nbits_layout_fits`: the same bytes, shaped (rows, blocks, bytes a block), scales in fp32), and an ONNX
    export runs :meth:`linear` as that op: the file's runtime reads the integers instead of folding them to floats at
    load (transformers and ExecuTorch run the products as before).

    ``as_float``: integers are also held as the fp32 ``values`` they stand for (exact: an 8-bit integer times an
    fp16 scale fits fp32's mantissa), which the products read (:meth:`linear`, :meth:`matrix`), for a runtime whose
    matmul kernels read floats only (ExecuTorch: :class:`ExportedFactors`' ``precomputed``). The rows still read
    the integers: XNNPACK copies a matmul's weights into its own blob, so a gather of the float values would store
    them twice (Gemma-3's main job: a 604.6 MB ``.pte``)."""

    def __init__(
        self,
        values: torch.Tensor,
        bits: int | None,
        group: int | None,
        name: str,
        as_float: bool = False,
        matmul_nbits: bool = False,
    ) -> None:
        super().__init__()
        self.bits, self.rows_count, self.cols = bits, values.shape[0], values.shape[1]
        self.holds_floats = bits is None or as_float  # the products read ``values``
        self.matmul_nbits = False
        if bits is None:  # float values as the checkpoint holds them (fp32, or the tail's fp16 columns)
            self.register_buffer("values", values.detach().contiguous())
            return
        values = values.detach().float().contiguous()
        self.group = _group(self.cols, group)
        q, scale = quantize(values, bits, group)
        if not torch.equal(dequantize(q, scale, bits, self.cols, group), values):
            raise FactorEmbedError(
                f"{name} is not what its checkpoint stores at {bits} bits (trained since it was saved?); "
                "save it with save_pretrained and export the saved folder"
            )
        self.matmul_nbits = matmul_nbits and not as_float and nbits_layout_fits(bits, self.group, self.cols)
        if self.matmul_nbits:  # the same bytes, in MatMulNBits' shapes: (rows, blocks, bytes a block); fp32 scales
            q, scale = q.reshape(self.rows_count, -1, self.group // 2), scale.float().reshape(-1)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        if as_float:
            self.register_buffer("values", values)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The float rows of ``ids`` (any shape): ``(*ids.shape, cols)``; only those rows are dequantized."""
        if self.bits is None:
            return F.embedding(ids, self.values).float()
        return self._dequantize(self.q[ids], self._row_scales()[ids])

    def matrix(self) -> torch.Tensor:
        """The whole float matrix."""
        return self.values.float() if self.holds_floats else self._dequantize(self.q, self._row_scales())

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ matrix().T`` (``(..., cols) -> (..., rows)``); with one scale a row, the scales multiply the
        products instead of the matrix. (Scaling products group by group, in either layout, was no faster in ONNX
        Runtime on Gemma-3's band: 4.3-5.4 ms a decode step against 4.9 ms, one run each.)"""
        if self.holds_floats:
            return F.linear(x, self.values.to(x.dtype))
        if self.matmul_nbits and torch.onnx.is_in_onnx_export():
            attributes = {"K": self.cols, "N": self.rows_count, "bits": self.bits, "block_size": self.group}
            shape = (*x.shape[:-1], self.rows_count)
            return torch.onnx.ops.symbolic(
                "com.microsoft::MatMulNBits", (x, self.q, self.scale), attributes, dtype=x.dtype, shape=shape, version=1
            )
        if self.group >= self.cols:
            return F.linear(x, self._integers(self.q).float()) * self._row_scales()[:, 0].float()
        if self.cols % self.group == 0 and torch.onnx.is_in_onnx_export():
            return self._grouped_linear(x)
        return F.linear(x, self.matrix())

    def _grouped_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``linear`` a group of columns at a time, the scales applied to the (rows, groups) products: what ONNX
        Runtime folds at load is the integers laid out as (groups, group, rows), then cast to float: one float
        matrix; the dequantized one went through a cast, an expand of the scales, a product and a transpose, each a
        matrix at once (Gemma-3's band: 51 MB each; with the low-rank codes as ``MatMulNBits`` the int4 shortlist
        file's load peak went 988 -> 703 MB, decode tokens/s unchanged: ``benchmarks/deploy.py``)."""
        groups = self.cols // self.group
        # laid out while still integers, then cast: one float matrix folded, not two
        weights = self._integers(self.q).reshape(self.rows_count, groups, self.group).permute(1, 2, 0).float()
        grouped = x.unflatten(-1, (groups, self.group)).unsqueeze(-2)  # (..., groups, 1, group)
        products = (grouped @ weights).squeeze(-2)  # (..., groups, rows)
        return (products * self._row_scales().float().t()).sum(-2)

    def _row_scales(self) -> torch.Tensor:
        return self.scale.reshape(self.rows_count, -1) if self.matmul_nbits else self.scale

    def _integers(self, q: torch.Tensor) -> torch.Tensor:
        """The stored integers as int8, ``(..., cols)``: 4-bit ones unpacked."""
        if self.matmul_nbits:  # (..., blocks, bytes a block) -> (..., bytes)
            q = q.flatten(-2)
        if self.bits == 4:  # two values a byte, low nibble first, offset by 8 (quantize's packing)
            # remainder and floor division rather than & and >>: those are not in core ATen (ExecuTorch refuses them)
            low, high = torch.remainder(q, 16), torch.div(q, 16, rounding_mode="floor")
            q = torch.stack([low.to(torch.int8) - 8, high.to(torch.int8) - 8], dim=-1).flatten(-2)
        return q[..., : self.cols]

    def _dequantize(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        scales = scale.float().repeat_interleave(self.group, dim=-1)[..., : self.cols]
        return self._integers(q).float() * scales


class ExportedFactors(nn.Module):
    """What a factorized layer (and its tied twin) reads: A, B, the band and the tail's product codes.

    ``shortlist``: the head reads a shortlist (:func:`~hf_factor_embed.layers.factorized.shortlist_tail_logits`), so
    the codes are of the tail's rows only (the band's rows read the band). Not for the full head: it reads every
    subspace's column of the codes, and ONNX Runtime 1.32 folds each at load from a copy of the table when the table
    is under about 32 MB (Gemma-3's main job: 242,189 rows of 128 codes, a 4.6 GB peak at load against 1.7 GB with
    all 262,144 rows, whose table it leaves unfolded).

    ``runtime`` (:class:`.target.RuntimeLayout`): what the runtime's file holds and how its graph reads it. Where
    ``precomputed``, every row's codes are kept (a token -> code row table would cost about what leaving out the
    band's codes saves) and the matrices are also held as fp32 values (:class:`StoredMatrix`'s ``as_float``);
    where ``matmul_nbits``, 4-bit matrices in MatMulNBits' layout; where ``offset_codes`` and ``shortlist``, every
    code as an int32 offset (plain, or paired where ``paired_codes``) in place of the uint8 codes, split after the
    first stage (:meth:`held_offsets`).
    """

    def __init__(
        self,
        layer: FactorizedLayer,
        config: FactorEmbedConfig,
        name: str,
        shortlist: bool = False,
        runtime: RuntimeLayout = PLAIN,
    ) -> None:
        super().__init__()
        self.num_embeddings = layer.num_embeddings
        self.lookups = runtime.lookups
        precision = config.precision if config.bits else (lambda tensor: (None, None))
        precomputed = runtime.precomputed

        def stored(tensor: str) -> StoredMatrix:
            values = getattr(layer, tensor)
            return StoredMatrix(
                values,
                *precision(tensor),
                f"{name}.{tensor}",
                as_float=precomputed,
                matmul_nbits=runtime.matmul_nbits,
            )

        self.codes, self.basis = stored("weight"), stored("basis")
        self.band = None
        if layer.dense_rows is not None:
            self.band = stored("dense_rows")
            self.register_buffer("dense_index", layer.dense_index.detach().clone())
        self.has_tail_codes = layer.has_tail_codes
        self.tail_rows_only = shortlist and self.has_tail_codes and self.band is not None and not precomputed
        self.register_buffer("first_offsets", None)
        self.register_buffer("rest_offsets", None)
        self.paired = False
        if self.has_tail_codes:
            for tensor in TAIL_CODE_TENSORS:
                if tensor != TAIL_COLUMN_TENSOR:
                    self.register_buffer(tensor, getattr(layer, tensor).detach().clone())
            if self.tail_rows_only:  # the band's rows read the band: their codes are not stored
                self.tail_codes = self.tail_codes[outside_band_mask(layer)].contiguous()
            self.tail_column_values = stored(TAIL_COLUMN_TENSOR)
            if shortlist and runtime.offset_codes:  # the codes as offsets only: the embedding's rows read them too
                self._hold_offsets(runtime.paired_codes)
        self.has_slot_table = precomputed and self.band is not None
        if self.has_slot_table:  # computed once here, then read from the table
            self.register_buffer("band_slot_table", band_slots(self.dense_index, self.num_embeddings))

    def _hold_offsets(self, paired: bool) -> None:
        """The codes as int32 offsets, split after the shortlist's first stage, the uint8 codes dropped."""
        m, centroids = self.codebooks.shape[:2]
        held = HeldOffsets.of(self.tail_codes, centroids, m // SHORTLIST_PARTIAL, paired)
        self.first_offsets, self.rest_offsets, self.paired = held
        self.tail_codes = None

    def band_slots(self) -> torch.Tensor:
        """Token id -> its row in the band, or -1 (computed in the graph: V integers, no stored table, unless
        ``precomputed``)."""
        if self.has_slot_table:
            return self.band_slot_table
        return band_slots(self.dense_index, self.num_embeddings)

    def code_rows(self) -> torch.Tensor | None:
        """Token id -> its row of ``tail_codes`` where those hold the tail's rows only (a band token reads a tail
        row it never uses). Computed in the graph, as :meth:`band_slots`: the band's ids are
        sorted, so a tail token's row is its id less the band tokens before it (Gemma-3's main job: 2.6 MB of the
        band's codes not stored). None where the codes hold every row."""
        if not self.tail_rows_only:
            return None
        in_band = torch.zeros(self.num_embeddings, dtype=torch.long).index_fill(0, self.dense_index, 1)
        ids = torch.arange(self.num_embeddings, device=in_band.device)
        return (ids - in_band.cumsum(0)).clamp_min(0)

    def _code_ids(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.code_rows()
        return ids if rows is None else rows[ids]

    def held_offsets(self) -> HeldOffsets | None:
        """The codes as int32 offsets, split after the shortlist's first stage, where the runtime reads them so
        (:class:`.target.RuntimeLayout`'s ``offset_codes`` and ``paired_codes``); else None."""
        return None if self.first_offsets is None else HeldOffsets(self.first_offsets, self.rest_offsets, self.paired)

    def tail_rows(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self._code_parts(self._code_ids(ids)) @ self.tail_rotation.float()
        return rows.index_copy(rows.dim() - 1, self.tail_columns, self.tail_column_values.rows(ids))

    def _code_parts(self, rows: torch.Tensor) -> torch.Tensor:
        """The product-coded parts of code ``rows`` (any shape) before the rotation, from the codes or the offsets
        (the same centroids: an offset is the row of the (m * K, sub_dim) codebooks)."""
        offsets = self.held_offsets()
        if offsets is None:
            return product_code_parts(rows, self.tail_codes, self.codebooks)
        m, centroids, sub_dim = self.codebooks.shape
        picked = offsets.plain(rows, centroids).flatten()
        return self.codebooks.reshape(m * centroids, sub_dim).index_select(0, picked).view(*rows.shape, m * sub_dim)

    def tail_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per position and subspace the state's dot products with the centroids, then a gather-sum per token, one
        subspace at a time: a (V, m) gather would cast all V * m codes to int64 and write a V * m float tensor every
        step (measured in ONNX Runtime on Gemma-3's 262,144 x 80 codes, this CPU, beside another job: 446 ms a step
        against 206 ms one subspace at a time). Reads every row's codes: only a shortlist file holds the tail's alone
        (``tail_rows_only``), and its head never calls this."""
        if self.tail_rows_only or self.tail_codes is None:
            raise FactorEmbedError("the full head reads every row's codes; these factors are a shortlist head's")
        m, k, s = self.codebooks.shape
        rotated = F.linear(hidden_states, self.tail_rotation.float())
        tables = torch.einsum("...ms,mks->...mk", rotated.unflatten(-1, (m, s)), self.codebooks.float())
        logits = tables[..., 0, :].index_select(-1, self.tail_codes[:, 0].long())
        for j in range(1, m):
            logits = logits + tables[..., j, :].index_select(-1, self.tail_codes[:, j].long())
        exact = hidden_states.index_select(-1, self.tail_columns)
        return logits + self.tail_column_values.linear(exact)


class ExportedEmbedding(nn.Module):
    """:class:`FactorizedEmbedding`'s forward over stored factors."""

    def __init__(self, layer: FactorizedEmbedding, factors: ExportedFactors) -> None:
        super().__init__()
        self.factors, self.embed_scale = factors, layer.embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        f = self.factors
        out = f.codes.rows(input_ids) @ f.basis.matrix()
        if f.has_tail_codes:
            out = out + f.tail_rows(input_ids)
        if f.band is not None:
            slots = f.band_slots()[input_ids]
            out = torch.where((slots >= 0).unsqueeze(-1), f.band.rows(slots.clamp_min(0)), out)
        if self.embed_scale is not None:
            out = out * self.embed_scale
        return out


class ExportedLMHead(nn.Module):
    """:class:`FactorizedLMHead`'s forward over stored factors (meant for the positions whose logits are kept).

    ``shortlist`` k (a product-coded tail only): the tail's codes are read for k tokens instead of all of them
    (:meth:`shortlist_logits`)."""

    def __init__(self, layer: FactorizedLMHead, factors: ExportedFactors, shortlist: int | None = None) -> None:
        super().__init__()
        self.factors = factors
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float(), requires_grad=False)
        if shortlist is not None and not factors.has_tail_codes:
            raise FactorEmbedError("a shortlist head reads a product-coded tail; this layer's tail is low-rank")
        tail_size = factors.num_embeddings - (0 if factors.band is None else factors.dense_index.shape[0])
        self.shortlist = None if shortlist is None else min(shortlist, tail_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        f = self.factors
        logits = self.shortlist_logits(hidden_states) if self.shortlist is not None else self.full_logits(hidden_states)
        if f.band is not None:  # the band's exact logits overwrite either head's columns there
            band = f.band.linear(hidden_states)
            if self.bias is not None:
                band = band + self.bias[f.dense_index]
            logits = logits.index_copy(-1, f.dense_index, band)
        return logits

    def full_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Every token's logit from the low-rank part and the tail's codes (the band's columns written after)."""
        f = self.factors
        logits = f.codes.linear(f.basis.linear(hidden_states))
        if self.bias is not None:
            logits = logits + self.bias
        if f.has_tail_codes:
            logits = logits + f.tail_logits(hidden_states)
        return logits

    def shortlist_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The full logits of ``shortlist`` tail tokens picked in two stages, by their coarse logits (the low-rank
        part and the exact columns: V x (r + c) products), then with a quarter of their codes; every other token
        -inf, the band's columns written after (:func:`~hf_factor_embed.layers.factorized.shortlist_tail_logits`,
        which transformers' head runs too).

        Greedy decoding reads the same token as the full head wherever the full head's winner is in the band or
        the shortlist; that is measured, not proven (``benchmarks/shortlist.py``): a bound on the codes' part that
        a decode step can afford is tens of times too loose to exclude a token. The step costs the V-wide coarse
        products, a TopK of 8k, 8k * m / 4 lookups, a TopK of k and k * 3m / 4 lookups.
        """
        f = self.factors
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # (n, d): n = batch x kept positions
        exact_columns = flat.index_select(-1, f.tail_columns)
        coarse = f.codes.linear(f.basis.linear(flat)) + f.tail_column_values.linear(exact_columns)
        if self.bias is not None:
            coarse = coarse + self.bias
        rotated = F.linear(flat, f.tail_rotation.float())
        band_index = None if f.band is None else f.dense_index
        logits = shortlist_tail_logits(
            coarse,
            rotated,
            f.tail_codes,
            f.codebooks,
            self.shortlist,
            band_index,
            code_rows=f.code_rows(),
            lookups=f.lookups,
            offsets=f.held_offsets(),
        )
        return logits.reshape(*hidden_states.shape[:-1], -1)
