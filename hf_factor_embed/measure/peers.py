"""The competition, measured in the same run on the same text: quantizing the dense embedding, and trimming the
vocabulary.

* ``int8`` (per row) and ``int4 g32``: symmetric round-to-nearest, as torchao's weight-only schemes and
  llama.cpp's Q8_0 / Q4_0 do; ``asym4 g32``: min/max 4-bit with an fp16 scale and offset per 32 values, a stand-in
  for llama.cpp's Q4_1 / Q4_K; ``int6 g16``: symmetric 6-bit, a stand-in for the Q6_K llama.cpp keeps a tied head
  at (its bytes counted at Q6_K's 6.5625 bits per value).
* ``trim``: vocabtrimmer's hard trimming: only the kept tokens' rows remain; any other id is read as the unknown
  token and cannot be predicted (:func:`hf_factor_embed.measure.perplexity.perplexity` with ``keep``).

Each peer acts on the dense model's embedding matrices (a tied pair once) in place for one evaluation and puts
them back, so peers and the factorized model are measured by the same code on the same windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..quantizer.rounding import dequantize, quantize
from .analysis import embedding_weights
from .perplexity import perplexity


@dataclass(frozen=True)
class QuantizedPeer:
    name: str
    bits: int
    group: int | None  # None: one scale per row
    symmetric: bool = True
    bits_per_value: float | None = None  # a format's own figure (Q6_K: 6.5625), else bits plus fp16 scale/offset

    def stored_bytes(self, rows: int, cols: int) -> int:
        if self.bits_per_value is not None:
            return int(rows * cols * self.bits_per_value / 8)
        groups = rows * (1 if self.group is None else -(-cols // self.group))
        return rows * cols * self.bits // 8 + groups * 2 * (1 if self.symmetric else 2)

    def perplexity(self, model, token_ids: torch.Tensor, window: int, bos_id: int | None = None, observe=None) -> float:
        with self.applied(model):
            return perplexity(model, token_ids, window=window, bos_id=bos_id, observe=observe)

    def applied(self, model) -> contextlib.AbstractContextManager[None]:
        """Inside the block, ``model``'s embedding matrices are this peer's (put back on leaving)."""
        return _swapped(model, lambda w: fake_quantize(w, self.bits, self.group, self.symmetric))


@dataclass(frozen=True)
class TrimmedPeer:
    name: str
    kept: torch.Tensor  # token ids kept
    unk_id: int

    @classmethod
    def ranked(cls, stats, special_ids: torch.Tensor, rows: int, unk_id: int, name: str = "trim") -> TrimmedPeer:
        """The vocabulary trimmed to ``rows`` tokens, ranked as the band is (:func:`.factorize.banded.band_scores`
        of the calibration statistics ``stats``), the special tokens first: trimming at the band's own ranking."""
        from ..factorize.banded import band_scores

        scores = band_scores(stats)
        scores[special_ids] = float("inf")
        return cls(name, torch.argsort(scores, descending=True, stable=True)[:rows], unk_id)

    def stored_bytes(self, rows: int, cols: int) -> int:
        return self.kept.numel() * cols * 4  # float32 rows, as the factorized model's own band

    def perplexity(self, model, token_ids: torch.Tensor, window: int, bos_id: int | None = None) -> float:
        keep = torch.zeros(model.get_input_embeddings().weight.shape[0], dtype=torch.bool)
        keep[self.kept] = True
        if bos_id is not None:
            keep[bos_id] = True  # a trimmed vocabulary keeps its special tokens too
        return perplexity(model, token_ids, window=window, keep=keep, unk_id=self.unk_id, bos_id=bos_id)


def quantization_peers() -> list[QuantizedPeer]:
    return [
        QuantizedPeer("int8", 8, None),
        QuantizedPeer("int8 g64", 8, 64),
        QuantizedPeer("int6 g16 (Q6_K stand-in)", 6, 16, bits_per_value=6.5625),
        QuantizedPeer("int4 g32", 4, 32),
        QuantizedPeer("asym4 g32 (Q4_1 stand-in)", 4, 32, symmetric=False),
    ]


@torch.no_grad()
def fake_quantize(w: torch.Tensor, bits: int, group: int | None, symmetric: bool = True) -> torch.Tensor:
    """What storing ``w`` with round-to-nearest at ``bits`` (fp16 scales, groups of ``group`` columns) gives back."""
    out = torch.empty_like(w)
    for start in range(0, w.shape[0], 8192):  # a block of rows at a time: the 262k x 640 case stays small
        rows = w[start : start + 8192].float()
        g = rows.shape[1] if group is None else group
        blocks = rows.reshape(rows.shape[0], -1, g)
        if symmetric:  # the rounding the checkpoints store (llama.cpp's Q8_0 / Q4_0, torchao's RTN)
            values = dequantize(*quantize(rows, bits, g), bits, rows.shape[1], g)
        else:
            low, high = blocks.amin(-1, keepdim=True).half().float(), blocks.amax(-1, keepdim=True)
            scale = ((high - low) / (2**bits - 1)).half().float().clamp_min(1e-8)
            values = ((blocks - low) / scale).round().clamp(0, 2**bits - 1) * scale + low
        out[start : start + 8192] = values.reshape(rows.shape).to(w.dtype)
    return out


@contextlib.contextmanager
def _swapped(model, transform) -> Iterator[None]:
    """Each dense embedding matrix (a tied pair once) replaced by ``transform(weight)`` inside the block."""
    weights = list(embedding_weights(model).values())
    originals = [w.data for w in weights]
    try:
        for w, original in zip(weights, originals, strict=True):
            w.data = transform(original)
        yield
    finally:
        for w, original in zip(weights, originals, strict=True):
            w.data = original
