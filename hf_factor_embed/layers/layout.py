"""What a factorized layer holds, as one small value: the layers are built from it, the config stores it (one entry
per role of ``quantization_config.modules``) and the plan counts its bytes from it
(:func:`hf_factor_embed.quantizer.rounding.layout_bytes`), so planned bytes are stored bytes by construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: The dtype of each tensor that is not held in the layer's float dtype.
FIXED_DTYPES = {
    "dense_index": torch.long,
    "tail_codes": torch.uint8,
    "tail_columns": torch.long,
    "tail_column_values": torch.float16,
}
#: Config keys that size a layer beyond its shape and rank; absent from an entry where zero (no band, no codes).
SIZE_KEYS = ("dense_rows", "tail_subvectors", "tail_centroids", "tail_exact_columns")


@dataclass(frozen=True)
class LayerLayout:
    """A factorized V x d matrix: A (V x ``rank``) @ B (``rank`` x d), a band of ``dense_rows`` exact rows, and
    where ``tail_subvectors`` is set a product-coded tail (``tail_subvectors`` codes a row into ``tail_centroids``
    centroids, a d x d rotation, ``tail_exact_columns`` coordinates kept apart in every row)."""

    num_embeddings: int
    embedding_dim: int
    rank: int
    dense_rows: int = 0
    tail_subvectors: int = 0
    tail_centroids: int = 256
    tail_exact_columns: int = 0

    def __post_init__(self) -> None:
        v, d, m, k = self.num_embeddings, self.embedding_dim, self.tail_subvectors, self.tail_centroids
        if not 1 <= self.rank <= min(v, d):
            raise ValueError(f"rank={self.rank} is outside 1..min(V={v}, d={d}); pick a rank in that range.")
        if not 0 <= self.dense_rows <= v:
            raise ValueError(f"dense_rows={self.dense_rows} is outside 0..{v}")
        if m and (d % m or not 1 <= k <= 256):
            raise ValueError(f"tail_subvectors={m} must divide d={d}, and tail_centroids={k} lie in 1..256")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor the layer holds and its logical shape (absent tensors left out)."""
        v, d, r, k = self.num_embeddings, self.embedding_dim, self.rank, self.dense_rows
        out = {"weight": (v, r), "basis": (r, d)}
        if k:
            out |= {"dense_rows": (k, d), "dense_index": (k,)}
        m, c = self.tail_subvectors, self.tail_exact_columns
        if m:
            out |= {"tail_codes": (v, m), "codebooks": (m, self.tail_centroids, d // m), "tail_rotation": (d, d)}
            out |= {"tail_columns": (c,), "tail_column_values": (v, c)}
        return out

    def dtype_of(self, name: str, float_dtype: torch.dtype) -> torch.dtype:
        return FIXED_DTYPES.get(name, float_dtype)

    def as_config(self) -> dict:
        """The entry ``quantization_config.modules[role]`` stores (sizes that are zero left out, as ever)."""
        entry = {"rank": self.rank, "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}
        if self.dense_rows:
            entry["dense_rows"] = self.dense_rows
        if self.tail_subvectors:
            entry |= {k: getattr(self, k) for k in ("tail_subvectors", "tail_centroids", "tail_exact_columns")}
        return entry

    @classmethod
    def from_config(cls, entry: dict) -> LayerLayout:
        """The layout of a config entry (other keys, e.g. ``embed_scale``, belong to the model, not the layout)."""
        fields = ("rank", "num_embeddings", "embedding_dim", *SIZE_KEYS)
        return cls(**{k: entry[k] for k in fields if k in entry})

    def as_dict(self) -> dict:
        return asdict(self)
