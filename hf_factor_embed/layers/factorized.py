"""Factorized replacements for a token embedding and an output head.

Both layers hold the same two factors of a dense ``W`` (V x d):

* ``weight`` is **A** (V x r): one rank-r code per token. It keeps the name ``weight`` on purpose, so that
  transformers' tied-key maps (``lm_head.weight -> model.embed_tokens.weight``), vocabulary-size lookups
  (``weight.shape[0]``) and mean-resizing of new rows keep working, and so that a Python without this plugin
  that tries to read a factorized checkpoint into a dense model fails on a shape mismatch instead of silently
  loading a wrong matrix.
* ``basis`` is **B** (r x d): the shared basis the codes live in.

Optionally a layer also holds a *dense band*: exact rows ``dense_rows`` (K x d) for the K token ids in
``dense_index``, which override the low-rank rows of those tokens (frequency-banded ranks, in the spirit of
GroupReduce and adaptive input embeddings: the most used tokens keep full rank, the long tail shares a basis).

A tied pair of layers shares all its Parameter objects (and the band's index); nothing is copied.

Optionally the tail also holds *product codes* (:mod:`hf_factor_embed.factorize.product`): ``tail_codes`` (V x m,
uint8), ``codebooks`` (m x K x d/m) and ``tail_rotation`` (d x d), added to A @ B: row v gains
``concat_j codebooks[j, tail_codes[v, j]] @ tail_rotation``. Every token keeps a row of its own (a low-rank tail
gives the tokens outside the band points of one small subspace). The head reads them by table lookup: per
subspace the dot products of the rotated hidden state with the K centroids once, then a gather-sum per token.

Memory layout: A and the band's rows are stored column-major (a (V, r) tensor with strides (1, V)), see
:func:`head_layout`. The band's token ids are kept sorted.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FactorEmbedError
from .layout import SIZE_KEYS, LayerLayout
from .lookups import HeldOffsets, code_offsets, gather_entries, lookup_tables, offset_sum

#: The tensors of a factorized layer stored column-major (:func:`head_layout`): A and the band's rows.
HEAD_LAYOUT_TENSORS = ("weight", "dense_rows")
#: The tensors of every factorized layer, and of its band.
LAYOUT_TENSORS = ("weight", "basis", "dense_rows", "dense_index")
#: Float tensors that never train: a tail's exact outlier columns (W's columns; fp16, or float32 once read back from
#: the int8 a checkpoint with integer factors stores: quantizer.rounding.TAIL_COLUMN_TENSOR).
FIXED_TENSORS = ("tail_column_values",)
#: The tensors of a product-coded tail (:mod:`hf_factor_embed.factorize.product`), stored as they are.
TAIL_CODE_TENSORS = ("tail_codes", "codebooks", "tail_rotation", "tail_columns", "tail_column_values")
#: Positions up to which the tail's codes are read by table lookup (each gathers V * m entries), and the rows per
#: block when more positions rebuild them instead (V x n logits either way).
_LOOKUP_POSITIONS = 4
_CODE_BLOCK = 16384
#: The shortlist head's two stages (:func:`shortlist_tail_logits`): tokens listed by coarse logit per token read
#: whole, and the share of the code subspaces read for every listed token.
SHORTLIST_WIDEN = 8
SHORTLIST_PARTIAL = 4
#: Row-major copies handed to state dicts, alive while a state dict holds them (see ``_save_to_state_dict``).
_ROW_MAJOR_COPIES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def head_layout(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (rows x cols) with the same values, stored column-major (strides ``(1, rows)``).

    Why: the head reads A as ``h @ A.T``. With A row-major, a decode step (one token) is a matrix-vector product
    over V dot products of length r, which CPU BLAS runs at a fraction of memory bandwidth; column-major turns it
    into a product that streams A once (SmolLM2's 49152 x 576 head at r=144, 2-core CPU: 0.43x -> 0.10x of
    the dense head's time, ``python benchmarks/speed.py --inference``). Embedding lookups gather a few
    rows and do not mind; checkpoints store the logical (V, r) tensor either way.
    """
    if matrix.dim() != 2 or matrix.stride() == (1, matrix.shape[0]):
        return matrix
    return matrix.t().contiguous().t()


def _row_major(tensor: torch.Tensor) -> torch.Tensor:
    """A row-major copy of ``tensor``, the same object for every caller while one is alive.

    Savers expect row-major tensors (safetensors refuses others; transformers' tie detection calls ``view(-1)``)
    and find ties by shared storage, so a tied embedding and head must get one copy, not two.
    """
    if tensor.is_contiguous():
        return tensor
    if tensor.device.type == "meta":  # no storage to tell tensors apart; transformers ties meta tensors by name
        return tensor.contiguous()
    key = (tensor.data_ptr(), tensor._version, tuple(tensor.shape), tensor.dtype, tensor.device)
    copy = _ROW_MAJOR_COPIES.get(key)
    if copy is None:
        copy = _ROW_MAJOR_COPIES[key] = tensor.contiguous()
    return copy


def band_slots(dense_index: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """Token id -> its row in a band holding ``dense_index``, or -1: ``(num_embeddings,)`` integers."""
    slots = torch.full((num_embeddings,), -1, dtype=torch.long, device=dense_index.device)
    return slots.index_put((dense_index,), torch.arange(dense_index.shape[0], device=dense_index.device))


def product_code_parts(ids: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """The product-coded rows of ``ids`` (any shape) in the rotated space, before the rotation: ``(*ids.shape, d)``."""
    m = codebooks.shape[0]
    picked = codes[ids.to(codes.device)].long()
    return codebooks[torch.arange(m, device=picked.device), picked].flatten(-2)


def product_code_rows(
    ids: torch.Tensor,
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    rotation: torch.Tensor,
    columns: torch.Tensor,
    column_values: torch.Tensor,
) -> torch.Tensor:
    """The product-coded part of the rows of ``ids`` (any shape), ``(*ids.shape, d)``: the parts rotated back,
    then the exact ``columns`` written in (the rotation's columns there are zero)."""
    rows = product_code_parts(ids, codes, codebooks) @ rotation
    return rows.index_copy(rows.dim() - 1, columns, column_values[ids].to(rows.dtype))


def shortlist_tail_logits(
    coarse: torch.Tensor,
    rotated: torch.Tensor,
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    shortlist: int,
    band_index: torch.Tensor | None,
    code_rows: torch.Tensor | None = None,
    *,
    lookups: str | None = None,
    offsets: HeldOffsets | None = None,
) -> torch.Tensor:
    """The tail's full logits for ``shortlist`` tail tokens, -inf for every other token (the band's columns
    included: the caller writes them): ``(n, V)``.

    Two stages pick the tokens. The ``SHORTLIST_WIDEN * shortlist`` tail tokens of highest ``coarse`` logit are
    listed, each gets the first ``1 / SHORTLIST_PARTIAL`` of its code subspaces added, and the ``shortlist`` best by
    that partial logit get the rest of their codes. On Gemma-3 (the main job's checkpoint, the 31 prompts of
    ``benchmarks/generation.py``) this found the full head's greedy continuation on all 31 at 8,192 read whole,
    where a single list of 16,384 by coarse logit found 29 and needed 65,536 for all 31: 2.9M lookups a step
    against 8.4M (``python benchmarks/shortlist_twostage.py``).

    ``coarse`` (n, V): each token's logit without its product-coded part (the low-rank part, the exact columns, the
    bias); ``rotated`` (n, m * sub_dim): the hidden states as the codebooks read them (``h @ tail_rotation.T``);
    ``code_rows`` (V,): token id -> its row of ``codes`` where those hold the tail's rows only (an exported file).
    The codes are read with a gather along the centroids of the (K, m) tables: entry [t, s] reads
    ``tables[codes[t, s], s]``, the codes as stored, never transposed (ONNX Runtime, Gemma-3's 16,384 x 128 listed
    codes: 6.5x faster than a gather of flat offsets; a transposed int64 index cost 13.5 ms a step more), or by flat
    offsets (``lookups``: see :func:`_code_sum`). ``offsets``: the codes held ready as int32 offsets, plain or
    paired, split after the first stage's m / ``SHORTLIST_PARTIAL`` subspaces (:class:`.lookups.HeldOffsets`);
    ``codes`` is then not read, and each stage's entries are summed by a product with ones (ExecuTorch's choice).
    Plain tensor ops: transformers runs it, and torch's exporters trace it as it is (:mod:`hf_factor_embed.export`).
    """
    m, _, sub_dim = codebooks.shape
    tables = torch.einsum("nms,mks->nkm", rotated.unflatten(-1, (m, sub_dim)), codebooks.to(rotated.dtype))
    candidates = coarse if band_index is None else coarse.index_fill(-1, band_index, float("-inf"))
    tail_size = coarse.shape[-1] - (0 if band_index is None else band_index.shape[0])
    kept = min(shortlist, tail_size)
    listed = candidates.topk(min(SHORTLIST_WIDEN * kept, tail_size), dim=-1, sorted=False).indices  # (n, k1)
    logits = coarse.gather(-1, listed)
    rows = listed if code_rows is None else code_rows[listed]
    partial = m // SHORTLIST_PARTIAL if listed.shape[-1] > kept else 0
    if partial:  # stage two: the first subspaces of every listed token's codes, then the best ``kept`` of them
        if offsets is None:
            logits = logits + _code_sum(tables[..., :partial], codes[:, :partial], rows, lookups=lookups)
        else:
            logits = logits + offsets.first_sums(tables, rows)
        best = logits.topk(kept, dim=-1, sorted=False).indices
        listed, rows, logits = listed.gather(-1, best), rows.gather(-1, best), logits.gather(-1, best)
    if offsets is None:
        logits = logits + _code_sum(tables[..., partial:], codes, rows, partial, lookups=lookups)
    else:
        if not partial:  # the list was short enough to skip the first stage: every subspace here
            logits = logits + offsets.first_sums(tables, rows)
        logits = logits + offsets.rest_sums(tables, rows)
    return torch.full_like(coarse, float("-inf")).scatter(-1, listed, logits)


def _code_sum(
    tables: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, skip: int = 0, lookups: str | None = None
) -> torch.Tensor:
    """Per listed token (its row of ``codes``), the sum over subspaces of ``tables[:, codes[row, skip + s], s]``:
    ``(n, k)``.

    The rows are gathered with one flat ``index_select`` (ONNX ``Gather``: a (n, k) index becomes ``GatherND``,
    slower). A constant slice of the codes (``codes[:, :m1]``, the first stage) is folded by ONNX Runtime at load;
    the second stage slices the k gathered rows instead, as it reads few.

    ``lookups`` "gather": the entries by a gather along the centroids; "flat": by flat int32 offsets into the
    tables, one ``index_select`` (:func:`.lookups.offset_sum`; Gemma-3's first stage in eager torch, 65,536 x 32
    lookups: 4.6 ms against 11 ms for the gather); the same sums bit for bit. None: "gather" while
    ``torch.export`` traces (ONNX Runtime's choice, :mod:`hf_factor_embed.export.target`), "flat" in eager torch.
    """
    n, k = rows.shape
    picked = codes.index_select(0, rows.flatten()).view(n, k, -1)[..., skip:]  # (n, k, subspaces)
    if lookups is None:
        lookups = "gather" if torch.compiler.is_exporting() else "flat"
    if lookups == "gather":
        return gather_entries(tables, picked).sum(-1)
    return offset_sum(lookup_tables(tables), code_offsets(picked, tables.shape[1]))


class FactorizedLayer(nn.Module):
    """What the two factorized layers share: the factors, their base shape and the way back to dense."""

    weight: nn.Parameter
    basis: nn.Parameter
    #: Names of the tensors a tied head shares with its embedding, beside ``weight``.
    shared_tensors = ("basis", "dense_rows", "dense_index", *TAIL_CODE_TENSORS)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        *,
        dense_rows: int = 0,
        tail_subvectors: int = 0,
        tail_centroids: int = 256,
        tail_exact_columns: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        layout = LayerLayout(
            num_embeddings, embedding_dim, rank, dense_rows, tail_subvectors, tail_centroids, tail_exact_columns
        )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        shapes = layout.shapes()
        for name in (*LAYOUT_TENSORS, *TAIL_CODE_TENSORS):
            if name not in shapes:  # registered as None, like nn.Linear's absent bias: no entry in the state dict
                self.register_parameter(name, None)
                continue
            dtype_of = layout.dtype_of(name, dtype or torch.get_default_dtype())
            shape = shapes[name]
            if name in HEAD_LAYOUT_TENSORS:  # column-major from the start (head_layout)
                value = torch.empty(shape[::-1], device=device, dtype=dtype_of).t()
            else:
                value = torch.zeros(shape, device=device, dtype=dtype_of)
            # Integers that never train are Parameters all the same, not buffers: transformers ties Parameters only.
            trains = dtype_of.is_floating_point and name not in FIXED_TENSORS
            self.register_parameter(name, nn.Parameter(value, requires_grad=trains))

    @property
    def layout(self) -> LayerLayout:
        """What the layer holds now (read from its tensors: resizing the vocabulary moves it)."""
        m, k, c = (0, 256, 0) if not self.has_tail_codes else (*self.codebooks.shape[:2], self.tail_columns.shape[0])
        v, r = self.weight.shape
        return LayerLayout(v, self.basis.shape[1], r, self.num_dense_rows, m, k, c)

    @classmethod
    def from_layout(cls, layout: LayerLayout, **kwargs) -> FactorizedLayer:
        """The layer holding ``layout``; ``kwargs``: the class's own (bias, padding_idx, ...), device, dtype."""
        sizes = {k: getattr(layout, k) for k in SIZE_KEYS}
        return cls(layout.num_embeddings, layout.embedding_dim, layout.rank, **sizes, **kwargs)

    @property
    def has_tail_codes(self) -> bool:
        return self.tail_codes is not None

    def tail_code_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The product-coded part of the rows of ``ids`` (any shape), ``(*ids.shape, d)``."""
        return product_code_rows(
            ids, self.tail_codes, self.codebooks, self.tail_rotation, self.tail_columns, self.tail_column_values
        )

    def tail_code_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states @ (product-coded rows).T``, the rows never formed whole.

        A decode step (a few positions) reads the codes by table lookup: per subspace the rotated state's dot
        products with the K centroids, then for every token the sum of its m entries, one ``embedding_bag`` (a
        bag of m flat offsets a token, summed as it gathers: no V x m intermediate; 3.9x faster than
        ``index_select`` and a sum on Gemma-3's 262,144 x 128 codes). Many positions (prefill, perplexity)
        rebuild the rows a block at a time in the rotated space and multiply, as a dense head would.
        """
        m, k, s = self.codebooks.shape
        rotated = F.linear(hidden_states, self.tail_rotation)  # h @ R.T: (..., d)
        flat = rotated.reshape(-1, m * s)
        if flat.shape[0] <= _LOOKUP_POSITIONS:
            bags = self._code_offsets().view(-1, m)
            tables = torch.einsum("pms,mks->pmk", flat.view(-1, m, s), self.codebooks).reshape(flat.shape[0], -1, 1)
            logits = torch.stack([F.embedding_bag(bags, table, mode="sum").view(-1) for table in tables])
        else:
            logits = torch.cat(
                [
                    flat @ product_code_parts(block, self.tail_codes, self.codebooks).T
                    for block in torch.arange(self.num_embeddings).split(_CODE_BLOCK)
                ],
                dim=-1,
            )
        logits = logits.reshape(*hidden_states.shape[:-1], -1)
        exact = hidden_states.index_select(-1, self.tail_columns)
        return logits + F.linear(exact, self.tail_column_values.to(exact.dtype))

    def _code_offsets(self) -> torch.Tensor:
        """The codes as flat int32 offsets into the m * K tables (V * m), cached while the codes are unchanged."""
        key = (self.tail_codes.data_ptr(), self.tail_codes._version, self.codebooks.shape[1])
        cached = getattr(self, "_offsets", None)
        if cached is None or cached[0] != key:
            cached = (key, code_offsets(self.tail_codes, self.codebooks.shape[1]).reshape(-1))
            object.__setattr__(self, "_offsets", cached)  # not a buffer: never saved, never moved by .to()
        return cached[1]

    @torch.no_grad()
    def use_head_layout(self) -> None:
        """Store A and the band's rows column-major again (after something replaced their storage, e.g. loading).
        The Parameter objects stay the same, so ties and optimizer state keep pointing at them."""
        self._relayout(head_layout)

    @torch.no_grad()
    def use_row_major_layout(self) -> None:
        """Store A and the band's rows row-major, as FSDP2 needs to shard them (``fully_shard`` refuses
        non-contiguous Parameters). Training does not mind; only the one-token decode of the head is slower.
        ``from_pretrained`` gives the head layout back."""
        self._relayout(torch.Tensor.contiguous)

    def _relayout(self, layout) -> None:
        for tensor in (getattr(self, name) for name in HEAD_LAYOUT_TENSORS):
            if tensor is not None and tensor.device.type != "meta":
                tensor.data = layout(tensor.data)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not keep_vars:  # detached values go to savers, which want row-major tensors
            for name in HEAD_LAYOUT_TENSORS:
                if destination.get(prefix + name) is not None:
                    destination[prefix + name] = _row_major(destination[prefix + name])

    @property
    def num_dense_rows(self) -> int:
        return 0 if self.dense_rows is None else self.dense_rows.shape[0]

    def band_slots(self) -> torch.Tensor:
        """Token id -> its row in ``dense_rows``, or -1 (recomputed each call: V integers, cheap, never stale)."""
        return band_slots(self.dense_index, self.weight.shape[0])

    @property
    def base_shape(self) -> tuple[int, int]:
        """Shape (V, d) of the dense matrix this layer stands for."""
        return (self.weight.shape[0], self.basis.shape[1])

    def dense_weight(self) -> torch.Tensor:
        """The dense V x d matrix A @ B with the band's rows (materialised: for merging and checks only)."""
        dense = self.weight @ self.basis
        if self.has_tail_codes:
            dense = dense + self.tail_code_rows(torch.arange(dense.shape[0], device=dense.device))
        if self.dense_rows is not None:
            dense = dense.index_copy(0, self.dense_index, self.dense_rows)
        return dense

    @torch.no_grad()
    def set_factors(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        dense_index: torch.Tensor | None = None,
        dense_rows: torch.Tensor | None = None,
        tail_codes=None,
    ) -> None:
        """Copy factors (and the band, and the tail's product codes) in, casting to this layer's dtype and device;
        the band is sorted by token id (the head then writes its columns in increasing order)."""
        if tuple(a.shape) != tuple(self.weight.shape) or tuple(b.shape) != tuple(self.basis.shape):
            raise ValueError(
                f"factor shapes {tuple(a.shape)} / {tuple(b.shape)} do not match the layer's "
                f"{tuple(self.weight.shape)} / {tuple(self.basis.shape)}"
            )
        if (dense_rows is None) != (self.dense_rows is None) or (
            dense_rows is not None and tuple(dense_rows.shape) != tuple(self.dense_rows.shape)
        ):
            raise ValueError(f"the band's rows do not match the layer's {self.num_dense_rows} dense rows")
        if (tail_codes is None) != (not self.has_tail_codes):
            raise ValueError("the tail's product codes do not match the layer's (tail_subvectors in the config)")
        self.weight.copy_(a)
        self.basis.copy_(b)
        if tail_codes is not None:
            self.tail_codes.copy_(tail_codes.codes)
            self.codebooks.copy_(tail_codes.codebooks)
            self.tail_rotation.copy_(tail_codes.rotation)
            self.tail_columns.copy_(tail_codes.columns)
            self.tail_column_values.copy_(tail_codes.column_values)
        if dense_rows is not None:
            dense_index, order = torch.as_tensor(dense_index).sort()
            self.dense_index.copy_(dense_index)
            self.dense_rows.copy_(dense_rows[order.to(dense_rows.device)])

    def extra_repr(self) -> str:
        v, d = self.base_shape
        band = f", dense_rows={self.num_dense_rows}" if self.dense_rows is not None else ""
        codes = f", tail_codes={tuple(self.codebooks.shape[:2])}" if self.has_tail_codes else ""
        return f"{v}, {d}, rank={self.weight.shape[1]}{band}{codes}"


class FactorizedEmbedding(FactorizedLayer):
    """Token embedding ``E[ids] = A[ids] @ B`` (times ``embed_scale`` where the replaced class scaled).

    ``padding_idx`` behaves as in :class:`torch.nn.Embedding`: that row of A gets no gradient.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        *,
        padding_idx: int | None = None,
        embed_scale: float | None = None,
        **layout,
    ) -> None:
        """``layout``: :class:`FactorizedLayer`'s keyword arguments (the band, the tail's codes, device, dtype)."""
        super().__init__(num_embeddings, embedding_dim, rank, **layout)
        self.padding_idx = padding_idx
        # A plain float, as in transformers' ScaledWordEmbedding classes: it is part of the architecture
        # (rebuilt from the config), never a weight to save.
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        codes = F.embedding(input_ids, self.weight, self.padding_idx)
        out = codes @ self.basis
        if self.has_tail_codes:
            out = out + self.tail_code_rows(input_ids)
        if self.dense_rows is not None:
            slots = self.band_slots()[input_ids]
            band = F.embedding(slots.clamp_min(0), self.dense_rows)
            out = torch.where((slots >= 0).unsqueeze(-1), band, out)
        if self.embed_scale is not None:
            out = out * self.embed_scale
        return out

    def to_dense(self) -> nn.Embedding:
        """A plain :class:`torch.nn.Embedding` holding A @ B (the scale stays with the caller's class)."""
        v, d = self.base_shape
        dense = nn.Embedding(v, d, padding_idx=self.padding_idx, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
        return dense


class FactorizedLMHead(FactorizedLayer):
    """Output head ``logits = (h @ B.T) @ A.T + bias``: two thin matmuls, A @ B is never formed."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        *,
        bias: bool = False,
        **layout,
    ) -> None:
        """``layout``: :class:`FactorizedLayer`'s keyword arguments (the band, the tail's codes, device, dtype)."""
        super().__init__(num_embeddings, embedding_dim, rank, **layout)
        factory = {"device": self.basis.device, "dtype": self.basis.dtype}
        self.bias = nn.Parameter(torch.zeros(num_embeddings, **factory)) if bias else None
        # nn.Linear's names, read by transformers (resize, generation) and by users.
        self.in_features = embedding_dim
        self.out_features = num_embeddings
        #: Tail tokens whose codes a decode step reads (None: all of them); see :meth:`use_shortlist`.
        self.shortlist: int | None = None

    def use_shortlist(self, shortlist: int | None) -> None:
        """Decode steps (a few positions, no gradient) read the product-coded tail's codes whole for ``shortlist``
        tail tokens only (the best by a quarter of their codes among the 8x as many of highest coarse logit),
        every other tail token's logit -inf: a greedy head cheaper than the full one (:func:`shortlist_tail_logits`;
        ``hf-factor-embed export --head shortlist`` writes the same; 8192 is its default).
        Its greedy token is the full head's wherever the full head's winner is in the band or the list (measured,
        not proven). Many positions (perplexity, training) keep the full head. ``None`` turns it off."""
        if shortlist is not None and (not self.has_tail_codes or shortlist < 1):
            raise FactorEmbedError(
                f"shortlist={shortlist!r}: a shortlist reads a product-coded tail's codes for a whole number (>= 1) "
                f"of tail tokens; this head {'has one' if self.has_tail_codes else 'has a low-rank tail'}"
            )
        self.shortlist = shortlist

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = F.linear(F.linear(hidden_states, self.basis), self.weight, self.bias)
        if self.has_tail_codes and self._reads_shortlist(hidden_states):
            flat = hidden_states.reshape(-1, hidden_states.shape[-1])
            coarse = logits.reshape(flat.shape[0], -1) + F.linear(
                flat.index_select(-1, self.tail_columns), self.tail_column_values.to(flat.dtype)
            )
            rotated = F.linear(flat, self.tail_rotation)
            band = self.dense_index if self.dense_rows is not None else None
            tail = shortlist_tail_logits(coarse, rotated, self.tail_codes, self.codebooks, self.shortlist, band)
            logits = tail.reshape(logits.shape)
        elif self.has_tail_codes:
            logits = logits + self.tail_code_logits(hidden_states)
        if self.dense_rows is not None:
            bias = None if self.bias is None else self.bias[self.dense_index]
            # In place: the logits are a fresh tensor that linear's backward does not need, so overwriting the
            # band's columns saves a second V-wide tensor and its copy per token.
            logits.index_copy_(-1, self.dense_index, F.linear(hidden_states, self.dense_rows, bias))
        return logits

    def _reads_shortlist(self, hidden_states: torch.Tensor) -> bool:
        positions = hidden_states.numel() // hidden_states.shape[-1]
        return self.shortlist is not None and positions <= _LOOKUP_POSITIONS and not torch.is_grad_enabled()

    def to_dense(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` holding A @ B (and the bias)."""
        v, d = self.base_shape
        dense = nn.Linear(d, v, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def tie_to(self, embedding: FactorizedEmbedding) -> None:
        """Share the embedding's factor Parameters (the same objects, as transformers ties weights)."""
        self.weight = embedding.weight
        for name in self.shared_tensors:
            setattr(self, name, getattr(embedding, name))
