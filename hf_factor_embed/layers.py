"""Factorized replacements for a token embedding and an output head.

Both layers hold the same two factors of a dense ``W`` (V x d):

* ``weight`` is **A** (V x r): one rank-r code per token. It keeps the name ``weight`` on purpose, so that
  transformers' tied-key maps (``lm_head.weight -> model.embed_tokens.weight``), vocabulary-size lookups
  (``weight.shape[0]``) and mean-resizing of new rows keep working, and so that a Python without this plugin
  that tries to read a factorized checkpoint into a dense model fails on a shape mismatch instead of silently
  loading a wrong matrix.
* ``basis`` is **B** (r x d): the shared basis the codes live in.

A tied pair of layers shares the two Parameter objects; nothing is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FactorizedLayer(nn.Module):
    """What the two factorized layers share: the factors, their base shape and the way back to dense."""

    weight: nn.Parameter
    basis: nn.Parameter

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= min(num_embeddings, embedding_dim):
            raise ValueError(
                f"rank={rank} is outside 1..min(V={num_embeddings}, d={embedding_dim}); pick a rank in that range."
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.weight = nn.Parameter(torch.empty(num_embeddings, rank, device=device, dtype=dtype))
        self.basis = nn.Parameter(torch.empty(rank, embedding_dim, device=device, dtype=dtype))

    @property
    def base_shape(self) -> tuple[int, int]:
        """Shape (V, d) of the dense matrix this layer stands for."""
        return (self.weight.shape[0], self.basis.shape[1])

    def dense_weight(self) -> torch.Tensor:
        """The dense V x d matrix A @ B (materialised: for merging and checks, not for the forward pass)."""
        return self.weight @ self.basis

    @torch.no_grad()
    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Copy factors in, casting to this layer's dtype and device."""
        if tuple(a.shape) != tuple(self.weight.shape) or tuple(b.shape) != tuple(self.basis.shape):
            raise ValueError(
                f"factor shapes {tuple(a.shape)} / {tuple(b.shape)} do not match the layer's "
                f"{tuple(self.weight.shape)} / {tuple(self.basis.shape)}"
            )
        self.weight.copy_(a)
        self.basis.copy_(b)

    def extra_repr(self) -> str:
        v, d = self.base_shape
        return f"{v}, {d}, rank={self.weight.shape[1]}"


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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, rank, device=device, dtype=dtype)
        self.padding_idx = padding_idx
        # A plain float, as in transformers' ScaledWordEmbedding classes: it is part of the architecture
        # (rebuilt from the config), never a weight to save.
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        codes = F.embedding(input_ids, self.weight, self.padding_idx)
        out = codes @ self.basis
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, rank, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(num_embeddings, device=device, dtype=dtype)) if bias else None
        # nn.Linear's names, read by transformers (resize, generation) and by users.
        self.in_features = embedding_dim
        self.out_features = num_embeddings

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(hidden_states, self.basis), self.weight, self.bias)

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
        self.basis = embedding.basis
