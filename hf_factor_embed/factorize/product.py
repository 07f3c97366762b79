"""Product-quantized codes for the tail: every token keeps a row of its own at one byte per ``sub_dim`` values.

A low-rank tail gives every token outside the band a point in one shared r-dimensional subspace: at Gemma-3's
rank 16 that is noise, and a language not served collapses (its tokens' rows are indistinguishable) while one
such row may win the argmax ("meshgridmeshgrid..."). Product quantization (Jegou et al., 2011; DPQ and CARVQ for
embeddings) splits each row into ``m = d / sub_dim`` sub-vectors and stores, for each, the index of the nearest of
``K`` centroids of its subspace: ``m`` bytes a row and ``m * K * sub_dim`` floats of codebooks.

Fitted here on the residual left by the low-rank part, in the metric the head needs: rows are first mapped by
``M^(1/2)`` with ``M`` the hidden-state second moment scaled to mean eigenvalue 1 plus ``mix * I`` (the tied
objective of :mod:`.activation`), quantized there, and mapped back by ``rotation = M^(-1/2)``, which the layer
applies after the lookup. So the squared error k-means minimises is the logit error a tied pair cares about.
Rows are weighted ``1 + V * (frequency + expected probability)``: the calibration's tokens pull the centroids, no
row is ignored. The k-means is plain torch (batched over subspaces, chunked over rows, weighted): no new
dependency, and weights and the rotation stay in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FactorEmbedError

#: Centroids per subspace: one byte per code.
CENTROIDS = 256
_CHUNK_BYTES = 256 * 2**20  # distance matrices in memory at once


@dataclass
class ProductCodes:
    """``codes`` (V x m, uint8), ``codebooks`` (m x K x sub_dim) and ``rotation`` (d x d): row v is
    ``concat_j codebooks[j, codes[v, j]] @ rotation``."""

    codes: torch.Tensor
    codebooks: torch.Tensor
    rotation: torch.Tensor

    def rows(self) -> torch.Tensor:
        m = self.codebooks.shape[0]
        parts = self.codebooks[torch.arange(m), self.codes.long()]  # V x m x sub_dim
        return parts.reshape(self.codes.shape[0], -1) @ self.rotation


def check_sub_dim(sub_dim: int, d: int) -> None:
    if isinstance(sub_dim, bool) or not isinstance(sub_dim, int) or sub_dim < 1 or d % sub_dim:
        raise FactorEmbedError(
            f"tail_sub_dim={sub_dim!r} must divide the embedding width {d} (e.g. 4 or 8: one byte per that many values)"
        )


def metric_root(metric: torch.Tensor | None, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M^(1/2), M^(-1/2)) of a d x d metric (identity for None)."""
    if metric is None:
        eye = torch.eye(d, dtype=torch.float64)
        return eye, eye
    values, vectors = torch.linalg.eigh(metric.double())
    values = values.clamp_min(values.max() * 1e-8)
    return (vectors * values.sqrt()) @ vectors.T, (vectors / values.sqrt()) @ vectors.T


@torch.no_grad()
def fit_product_codes(
    residual: torch.Tensor,
    *,
    sub_dim: int,
    metric: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    centroids: int = CENTROIDS,
    iterations: int = 10,
    seed: int = 0,
) -> ProductCodes:
    """Product codes of ``residual`` (V x d), fitted by weighted k-means in each subspace under ``metric``."""
    v, d = residual.shape
    check_sub_dim(sub_dim, d)
    root, inverse_root = metric_root(metric, d)
    x = (residual.double() @ root).float().reshape(v, d // sub_dim, sub_dim).transpose(0, 1).contiguous()
    weights = torch.ones(v) if row_weights is None else row_weights.float().clamp_min(0)
    generator = torch.Generator().manual_seed(seed)
    k = min(centroids, v)
    start = torch.multinomial(weights / weights.sum(), k, replacement=False, generator=generator)
    books = x[:, start].clone()  # m x K x sub_dim
    for _ in range(iterations):
        codes = _assign(x, books)
        books = _update(x, codes, weights, books, generator)
    return ProductCodes(_assign(x, books).T.contiguous().to(torch.uint8), books, inverse_root.float())


def _assign(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """m x V: the nearest centroid of each row in each subspace."""
    m, v, _ = x.shape
    k = books.shape[1]
    chunk = max(1, _CHUNK_BYTES // (4 * m * k))
    book_norms = books.pow(2).sum(-1).unsqueeze(1)  # m x 1 x K
    out = torch.empty(m, v, dtype=torch.long)
    for start in range(0, v, chunk):
        part = x[:, start : start + chunk]
        distances = book_norms - 2 * torch.bmm(part, books.transpose(1, 2))  # ||x||^2 is the same for every centroid
        out[:, start : start + chunk] = distances.argmin(-1)
    return out


def _update(x, codes, weights, books, generator) -> torch.Tensor:
    """Weighted means of each centroid's rows; an empty centroid takes a random row."""
    m, v, s = x.shape
    k = books.shape[1]
    offsets = codes + torch.arange(m).unsqueeze(1) * k  # m x V, into a flat m*K table
    mass = torch.zeros(m * k).index_add_(0, offsets.reshape(-1), weights.repeat(m))
    sums = torch.zeros(m * k, s).index_add_(0, offsets.reshape(-1), (x * weights[None, :, None]).reshape(-1, s))
    new = (sums / mass.clamp_min(1e-12).unsqueeze(1)).view(m, k, s)
    empty = (mass == 0).view(m, k)
    if empty.any():
        picks = torch.randint(v, (int(empty.sum()),), generator=generator)
        new[empty] = x[empty.nonzero()[:, 0], picks]
    return new
