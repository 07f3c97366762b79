"""Frequency-banded factorization: exact rows for the most frequent tokens, a shared low-rank basis for the rest.

In the spirit of GroupReduce and adaptive input embeddings. Real text uses a few thousand of SmolLM2's 49,152
tokens for nearly all of its positions, and a rank-r basis cannot serve both them and the long tail. At the
parameter count of a rank-r factorization, this method spends ``band_share`` of it on K exact rows (the K most
frequent calibration tokens) and the rest on a rank r' < r factorization of the remaining rows, fitted with the
two-sided weighting (frequency rows; hidden-state metric where the matrix serves the output side).
Which tokens get the band: by default, those with the highest calibration frequency *plus* the model's own mean
next-token probability over the calibration text (``expected_probs``, where the model has a head). Counts alone
know only the tokens that happened to occur: a short text leaves most of a 49k vocabulary at zero, and another
kind of text then meets its own frequent tokens outside the band. The model's predicted distribution also
ranks the tokens it finds plausible in such text, and so it carries over better to text of another kind
(``python benchmarks/quality.py``, SmolLM2 at rank 128 calibrated on Python's reference: license text 208 -> 105,
changelogs 43.4 -> 39.4, the calibration kind 19.5 -> 18.5; calibrated on license text, better on all three
kinds; calibrated on Debian changelogs, 3% to 15% worse on all three: 21.9 -> 22.5 in-domain).
Remaining ties (when K exceeds the tokens either statistic ranks) go to lower ids. The special tokens
(``task.exact_ids``: bos, eos, pad, the chat markers) come first whatever their scores: every prompt holds them,
and a ``<bos>`` outside the band broke every greedy continuation of Gemma-3 while held-back perplexity without
it read 1.04x. benchmarks/RESULTS.md has the evidence for the default share.
"""

from __future__ import annotations

import torch

from ..config import INPUT
from ..errors import FactorEmbedError
from ..layers.layout import LayerLayout
from ..options import TAILS, check_band_share, check_positive_int, default, is_whole
from .activation import normalized_cov
from .base import FactorizationMethod, FactorizationTask, Factors
from .frequency import row_weights
from .lowrank import weighted_lowrank
from .product import check_sub_dim, fit_product_codes, outlier_columns


def band_plan(v: int, d: int, rank: int, band_share: float) -> tuple[int, int]:
    """(K dense rows, inner rank r') with K*d + r'*(V + d) <= rank*(V + d), i.e. the size of a rank-``rank``
    factorization (A keeps all V rows, so a banded layer has the plain layer's shapes plus the band)."""
    budget = rank * (v + d)
    if budget >= v * d:  # room for every row: the band alone is exact
        return v, 1
    k = min(v, int(band_share * budget / d))
    inner = (budget - k * d) // (v + d)
    if inner < 1:  # the share left the tail nothing: the band gives back one rank's worth (it keeps a band:
        k, inner = (budget - (v + d)) // d, 1  # a share near 1 once dropped every exact row, special tokens too)
    return k, inner


class BandedMethod(FactorizationMethod):
    name = "banded"
    needs = frozenset({"token_counts"})
    uses = frozenset({"token_counts", "hidden_cov", "expected_probs"})

    def __init__(
        self,
        band_share: float = default("band_share"),
        use_expected_probs: bool = True,
        *,
        tail: str = "lowrank",
        tail_rank: int = 16,
        tail_sub_dim: int = 8,
        tail_centroids: int = 256,
        tail_exact_columns: int = 16,
    ) -> None:
        """``tail``: ``"lowrank"`` (the rows outside the band share a rank-r' basis, r' from the plan) or
        ``"pq"`` (a rank-``tail_rank`` basis plus product codes of the residual, one byte per ``tail_sub_dim``
        values: :mod:`.product`)."""
        if tail not in TAILS:
            raise FactorEmbedError(f"tail={tail!r} is not one of {', '.join(TAILS)}")
        check_positive_int("tail_rank", tail_rank)
        check_positive_int("tail_sub_dim", tail_sub_dim)
        if not is_whole(tail_centroids) or not 2 <= tail_centroids <= 256:
            raise FactorEmbedError(f"tail_centroids={tail_centroids!r} must lie in 2..256 (codes are one byte)")
        self.tail, self.tail_rank, self.tail_sub_dim = tail, tail_rank, tail_sub_dim
        self.tail_centroids = tail_centroids
        if not is_whole(tail_exact_columns) or tail_exact_columns < 0:
            raise FactorEmbedError(f"tail_exact_columns={tail_exact_columns!r} must be a whole number, 0 or more")
        self.tail_exact_columns = tail_exact_columns
        self.tail_mix = 0.3 if tail == "pq" else 0.0
        check_band_share("band_share", band_share)
        self.band_share = float(band_share)
        self.use_expected_probs = use_expected_probs

    def layout(self, v: int, d: int, rank: int, special_rows: int = 0) -> LayerLayout:
        """What a layer factorized by this method at the size of a rank-``rank`` factorization holds: the layers, the
        config and the plan's byte count all read this (``special_rows``: the special tokens, exact in any band)."""
        k, inner = band_plan(v, d, rank, self.band_share)
        k = max(k, special_rows) if k else k
        if self.tail != "pq":
            return LayerLayout(v, d, inner, k)
        check_sub_dim(self.tail_sub_dim, d)
        columns = min(self.tail_exact_columns, d)
        return LayerLayout(v, d, min(self.tail_rank, d), k, d // self.tail_sub_dim, self.tail_centroids, columns)

    def factorize(self, task: FactorizationTask) -> Factors:
        v, d = task.weight.shape
        special = 0 if task.exact_ids is None else task.exact_ids.numel()
        layout = self.layout(v, d, task.rank, special)
        k, inner = layout.dense_rows, layout.rank
        weights = row_weights(task)
        scores = self.band_scores(task)
        if k and special:
            scores[task.exact_ids] = float("inf")  # the special tokens first, whatever the text says
        top = torch.argsort(scores, descending=True, stable=True)[:k]
        weights[top] = 0.0  # exact rows need nothing from the basis
        metric = normalized_cov(task)
        if metric is not None and INPUT in task.roles and self.tail_mix:  # a tied pair: the joint metric
            metric = metric + self.tail_mix * torch.eye(d, dtype=metric.dtype)
        if self.tail == "pq":
            return self._product_tail(task, top, weights, inner, metric)
        a, b = weighted_lowrank(task.weight, inner, row_weights=weights, col_cov=metric)
        return Factors(a, b, dense_index=top.sort().values if top.numel() else None)

    def _product_tail(self, task, top, weights, inner, metric) -> Factors:
        """Outlier columns exact, a rank-``inner`` basis for the rest, product codes of what it leaves."""
        v, _ = task.weight.shape
        columns = outlier_columns(metric, task.weight, min(self.tail_exact_columns, task.weight.shape[1]))
        weight = task.weight.float().index_fill(1, columns, 0.0)
        a, b = weighted_lowrank(weight, inner, row_weights=weights, col_cov=metric)
        b = b.index_fill(1, columns, 0.0)
        # The band's rows never read the codes: they would pull the centroids towards rows that are exact anyway.
        code_weights = (1 + v * self.band_scores(task)).index_fill(0, top, 0.0)
        codes = fit_product_codes(
            weight - a @ b,
            sub_dim=self.tail_sub_dim,
            metric=metric,
            row_weights=code_weights,
            centroids=self.tail_centroids,
            columns=columns,
            column_values=task.weight.float()[:, columns],
        )
        return Factors(a, b, dense_index=top.sort().values if top.numel() else None, tail_codes=codes)

    def band_scores(self, task: FactorizationTask) -> torch.Tensor:
        """How much each token deserves an exact row: its calibration frequency plus its expected probability."""
        return band_scores(task.stats, self.use_expected_probs)


def band_scores(stats, use_expected_probs: bool = True) -> torch.Tensor:
    """Calibration frequency plus the model's expected probability, per token, from :class:`CalibrationStats`
    (what ranks the band; benchmarks rank trimmed vocabularies by it too)."""
    counts = stats.token_counts.double()
    scores = counts / counts.sum().clamp_min(1)
    probs = stats.expected_probs
    if use_expected_probs and probs is not None:
        if probs.shape != counts.shape:
            raise ValueError(f"expected_probs covers {probs.shape[0]} tokens but the counts {counts.shape[0]}")
        scores = scores + probs.double()
    return scores
