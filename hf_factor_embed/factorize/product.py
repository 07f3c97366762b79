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
row is ignored. The k-means is faiss's (``faiss.Kmeans`` with row weights, one subspace at a time) where
``faiss-cpu`` is installed (``pip install "hf-factor-embed[pq]"``), else the same weighted k-means in plain torch
(batched over subspaces, chunked over rows). Gemma-3's 262,144 x 640 embedding, 80 subspaces of 8, 10 iterations on
this 2-core CPU: the whole factorization took about 240 s with the torch k-means and 21 s with faiss's
(``python benchmarks/tail.py``, ``patch_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FactorEmbedError
from ..layers.factorized import product_code_rows
from ..options import is_whole
from .lowrank import sqrt_and_inv_sqrt

#: Centroids per subspace: one byte per code.
CENTROIDS = 256
_CHUNK_BYTES = 256 * 2**20  # distance matrices in memory at once


@dataclass
class ProductCodes:
    """``codes`` (V x m, uint8), ``codebooks`` (m x K x sub_dim) and ``rotation`` (d x d): row v is
    ``concat_j codebooks[j, codes[v, j]] @ rotation``, except in the ``columns`` (c,), which hold ``column_values``
    (V x c, fp16) exactly (the rotation's columns there are zero)."""

    codes: torch.Tensor
    codebooks: torch.Tensor
    rotation: torch.Tensor
    columns: torch.Tensor
    column_values: torch.Tensor

    def rows(self) -> torch.Tensor:
        """Every row the codes stand for (V x d), as the layers read them."""
        ids = torch.arange(self.codes.shape[0])
        return product_code_rows(ids, self.codes, self.codebooks, self.rotation, self.columns, self.column_values)


def outlier_columns(metric: torch.Tensor | None, weight: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` coordinates with the largest hidden-state second moment (without one, the largest column
    norms of W). A few coordinates of an LLM's final hidden state carry massive activations (Gemma-3: coordinate
    507 reaches -365 on Hindi text, where the typical one is a few units); an error of 1% in those columns of a row
    then moves its logit by tens and a tail token wins every argmax. Kept exact, they cost V * count fp16 values:
    with 16, Hindi went from 4e8x to 5.7x dense (``python benchmarks/tail.py``)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    size = metric.diagonal() if metric is not None else weight.float().pow(2).sum(0)
    return size.argsort(descending=True)[:count].sort().values


def check_sub_dim(sub_dim: int, d: int) -> None:
    if not is_whole(sub_dim) or sub_dim < 1 or d % sub_dim:
        raise FactorEmbedError(
            f"tail_sub_dim={sub_dim!r} must divide the embedding width {d} (e.g. 4 or 8: one byte per that many values)"
        )


def metric_root(metric: torch.Tensor | None, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M^(1/2), M^(-1/2)) of a d x d metric (identity for None)."""
    if metric is None:
        eye = torch.eye(d, dtype=torch.float64)
        return eye, eye
    return sqrt_and_inv_sqrt(metric, 1e-8, floor_only=True)


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
    columns: torch.Tensor | None = None,
    column_values: torch.Tensor | None = None,
) -> ProductCodes:
    """Product codes of ``residual`` (V x d), fitted by weighted k-means in each subspace under ``metric``; the
    ``columns`` (kept exact as ``column_values`` by the caller) are left out of the fit."""
    v, d = residual.shape
    check_sub_dim(sub_dim, d)
    columns = torch.zeros(0, dtype=torch.long) if columns is None else columns
    residual = residual.index_fill(1, columns, 0.0)
    root, inverse_root = metric_root(metric, d)
    x = (residual.double() @ root).float().reshape(v, d // sub_dim, sub_dim).transpose(0, 1).contiguous()
    weights = torch.ones(v) if row_weights is None else row_weights.float().clamp_min(0)
    k = min(centroids, v)
    fit = _kmeans_faiss if _has_faiss() else _kmeans_torch
    books, codes = fit(x, weights, k, iterations, seed)
    rotation = inverse_root.float().index_fill(1, columns, 0.0)
    values = torch.zeros(v, columns.numel()) if column_values is None else column_values
    return ProductCodes(codes.T.contiguous().to(torch.uint8), books, rotation, columns, values.half())


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _kmeans_faiss(x, weights, k: int, iterations: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss's k-means in each subspace: (m x K x sub_dim centroids, m x V codes)."""
    import faiss

    books, codes = [], []
    w = weights.numpy().astype("float32")
    for part in x:
        data = part.numpy().astype("float32", copy=False)
        kmeans = faiss.Kmeans(
            data.shape[1],
            k,
            niter=iterations,
            seed=seed,
            max_points_per_centroid=data.shape[0],
            min_points_per_centroid=1,
        )
        kmeans.train(data, weights=w)
        codes.append(torch.from_numpy(kmeans.index.search(data, 1)[1][:, 0].astype("int64")))
        books.append(torch.from_numpy(kmeans.centroids.copy()))
    return torch.stack(books), torch.stack(codes)


def _kmeans_torch(x, weights, k: int, iterations: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same weighted k-means in plain torch, all subspaces at once."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.multinomial(weights / weights.sum(), k, replacement=False, generator=generator)
    books = x[:, start].clone()  # m x K x sub_dim
    for _ in range(iterations):
        books = _update(x, _assign(x, books), weights, books, generator)
    return books, _assign(x, books)


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
