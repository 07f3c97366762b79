"""PNG plots for the command line and the model card (matplotlib, the ``plots`` extra; Agg, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def spectrum_plot(spectra: dict[str, list[float]], path: str | Path, ranks: dict[str, int] | None = None) -> Path:
    """Singular values per embedding (log scale), with the chosen rank marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for role, values in spectra.items():
        ax.semilogy(range(1, len(values) + 1), values, label=f"{role} ({len(values)} values)")
        if ranks and role in ranks:
            ax.axvline(ranks[role], linestyle="--", color="grey")
            ax.text(ranks[role], max(values), f" rank {ranks[role]}", va="top", fontsize=8)
    ax.set(xlabel="index", ylabel="singular value", title="Embedding spectrum")
    ax.legend(fontsize=8)
    return _save(fig, path)


def error_plot(curves: dict[str, list[float]], path: str | Path, budget_rank: int | None = None) -> Path:
    """Relative error of the best rank-r fit against r, one curve per variant (plain, frequency-weighted)."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, errors in curves.items():
        ax.plot(range(1, len(errors) + 1), errors, label=label)
    if budget_rank:
        ax.axvline(budget_rank, linestyle="--", color="grey")
        ax.text(budget_rank, 0.95, f" budget: rank {budget_rank}", va="top", fontsize=8)
    ax.set(xlabel="rank r", ylabel="relative error ||W - W_r|| / ||W||", ylim=(0, 1), title="Error per rank")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pca_plot(
    coords: list[list[float]], path: str | Path, frequency: list[float] | None = None, title: str = ""
) -> Path:
    """Token rows in the plane of the top two singular directions, coloured by calibration frequency."""
    import numpy as np

    xy = np.asarray(coords)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    if frequency is not None:
        colour = np.log10(1 + np.asarray(frequency))
        order = np.argsort(colour)  # frequent tokens drawn last, on top
        points = ax.scatter(xy[order, 0], xy[order, 1], c=colour[order], s=2, cmap="viridis")
        fig.colorbar(points, ax=ax, label="log10(1 + count in calibration text)")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=2, c="tab:blue")
    ax.set(xlabel="component 1", ylabel="component 2", title=title or "Token rows, top two directions")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
