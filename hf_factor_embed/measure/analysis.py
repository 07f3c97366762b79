"""What factorizing an embedding would cost, before doing it: spectra, energy and error per rank, token rows in
the plane of the top two singular directions, and the rank that fits a budget.

``hf-factor-embed analyze`` draws these (:mod:`.plots`) and writes them as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..factorize.ranks import rank_for_budget


def embedding_weights(model) -> dict[str, torch.Tensor]:
    """Role -> the dense matrix of the model's token embedding and output head (a tied head's once)."""
    from ..adapters import get_adapter

    adapter = get_adapter(model)
    weights, seen = {}, set()
    for role in ("input", "output"):
        weight = getattr(adapter.get(model, role), "weight", None)
        if weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            weights[role] = weight
    return weights


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of a (V x d) matrix, largest first, float64 on the CPU."""
    return torch.linalg.svdvals(weight.detach().double().cpu())


def energy_kept(values: torch.Tensor) -> torch.Tensor:
    """Share of the squared Frobenius norm a rank-r truncation keeps, for r = 1..len(values)."""
    squares = values.double().pow(2)
    return squares.cumsum(0) / squares.sum()


def params_kept(rank: int, rows: int, cols: int) -> float:
    return rank * (rows + cols) / (rows * cols)


@dataclass
class EmbeddingAnalysis:
    """One embedding matrix: its spectrum and what each rank keeps."""

    role: str
    shape: tuple[int, int]
    singular_values: list[float]
    energy: list[float]  # energy kept at rank 1..d
    relative_error: list[float]  # plain SVD, sqrt(1 - energy)
    weighted_error: list[float] | None = None  # frequency-weighted rows (calibration counts), when given
    pca: list[list[float]] = field(default_factory=list)  # (V, 2): rows in the top-2 singular directions
    frequency: list[float] | None = None  # calibration count per row, for colouring

    def rank_for_energy(self, share: float) -> int:
        return int(next((i + 1 for i, e in enumerate(self.energy) if e >= share), len(self.energy)))

    def summary(self, budget: float | None = None) -> dict:
        rows, cols = self.shape
        out = {
            "role": self.role,
            "shape": list(self.shape),
            "rank_for_energy": {str(s): self.rank_for_energy(s) for s in (0.5, 0.8, 0.9, 0.95, 0.99)},
        }
        if budget is not None:
            rank = rank_for_budget(budget, rows, cols)
            out["budget"] = {
                "budget": budget,
                "rank": rank,
                "energy_kept": round(self.energy[min(rank, len(self.energy)) - 1], 4),
                "relative_error": round(self.relative_error[min(rank, len(self.energy)) - 1], 4),
            }
        return out


def analyze_weight(
    role: str, weight: torch.Tensor, counts: torch.Tensor | None = None, pca_rows: int = 20000
) -> EmbeddingAnalysis:
    """Spectrum, energy and error per rank of ``weight``; with calibration ``counts`` (V,), also the error of
    a rank-r fit whose rows are weighted by sqrt(1 + count), the weighting the frequency-aware methods use."""
    w = weight.detach().double().cpu()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    energy = energy_kept(s)
    result = EmbeddingAnalysis(
        role=role,
        shape=tuple(w.shape),
        singular_values=s.tolist(),
        energy=energy.tolist(),
        relative_error=(1 - energy).clamp_min(0).sqrt().tolist(),
    )
    coords = (u[:, :2] * s[:2]).float()
    keep = torch.arange(w.shape[0])[:pca_rows]  # the first rows: enough for a readable scatter
    result.pca = coords[keep].tolist()
    if counts is not None:
        weights = (1 + counts.double().cpu()).sqrt()
        sw = torch.linalg.svdvals(w * weights[:, None])
        kept = energy_kept(sw)
        result.weighted_error = (1 - kept).clamp_min(0).sqrt().tolist()
        result.frequency = counts[keep].double().tolist()
    return result
