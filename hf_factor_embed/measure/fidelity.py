"""How close a model's next-token distributions stay to a reference model's, as the quantization world reports it
(llama.cpp's ``llama-perplexity --kl-divergence``): teacher-forced on the same windows as perplexity, the mean
KL divergence KL(reference || model) per position with its 99th percentile, and the share of positions whose most
likely token is the reference's ("same top").

Both models read each window in turn, so no V-wide logits are kept beyond one batch (Gemma-3's 262k vocabulary
over 512 positions is half a gigabyte a window in float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..calibration.model_text import model_windows


@dataclass(frozen=True)
class Fidelity:
    """Per-position statistics of a model against a reference on the same windows."""

    mean_kld: float
    p99_kld: float
    same_top: float
    positions: int

    def as_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def position_stats(reference_logits: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(reference || model) per position, whether the top tokens agree per position) for logits (..., V)."""
    reference = torch.log_softmax(reference_logits.float(), dim=-1)
    ours = torch.log_softmax(logits.float(), dim=-1)
    kld = (reference.exp() * (reference - ours)).sum(-1).clamp_min(0.0)  # rounding can dip a hair below 0
    same = reference.argmax(-1) == ours.argmax(-1)
    return kld.reshape(-1), same.reshape(-1)


@torch.no_grad()
def fidelity(
    reference, model, token_ids: torch.Tensor, window: int = 512, bos_id: int | None = None, batch_size: int = 1
) -> Fidelity:
    """``model`` against ``reference`` over the windows :func:`.perplexity.perplexity` scores (``bos_id`` first in
    each), every scored position counted (those predicting the window's text, as perplexity counts them)."""
    windows = model_windows(token_ids.reshape(-1), window, bos_id)
    device = next(model.parameters()).device
    klds, same = [], []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        kld, agree = position_stats(reference(input_ids=batch).logits[:, :-1], model(input_ids=batch).logits[:, :-1])
        klds.append(kld.cpu())
        same.append(agree.cpu())
    kld, agree = torch.cat(klds), torch.cat(same)
    return Fidelity(
        mean_kld=float(kld.double().mean()),
        p99_kld=float(torch.quantile(kld.double(), 0.99)),
        same_top=float(agree.double().mean()),
        positions=int(kld.numel()),
    )


#: The reference's most likely next tokens kept at each position. KL divergence is summed over them, the rest of
#: both distributions' mass counted as one more outcome: a lower bound of the full sum that keeps a reference for
#: thousands of positions in megabytes (Gemma-3's full distributions would be a gigabyte per 1,000 positions).
TOP_K = 64


@dataclass(frozen=True)
class ReferenceTop:
    """A reference model's ``k`` most likely next tokens and their log-probabilities at each scored position."""

    logprobs: torch.Tensor  # (positions, k), descending
    ids: torch.Tensor  # (positions, k)

    @classmethod
    def of(cls, logits: torch.Tensor, k: int = TOP_K) -> ReferenceTop:
        logprobs = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        return cls(top.values, top.indices)

    @classmethod
    def cat(cls, parts: list[ReferenceTop]) -> ReferenceTop:
        return cls(torch.cat([p.logprobs for p in parts]), torch.cat([p.ids for p in parts]))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def part(self, start: int, stop: int) -> ReferenceTop:
        return ReferenceTop(self.logprobs[start:stop], self.ids[start:stop])

    def compare(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL(reference || model) per position over the kept tokens and the rest, whether the model's top token
        is the reference's) for the model's ``logits`` (positions, V) at the same positions."""
        ours = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
        kept = ours.gather(1, self.ids)
        p = self.logprobs.exp()
        kld = (p * (self.logprobs - kept)).sum(-1)
        rest_p = (1 - p.sum(-1)).clamp_min(0)
        rest_q = (1 - kept.exp().sum(-1)).clamp_min(1e-12)
        kld = kld + torch.where(rest_p > 0, rest_p * (rest_p.clamp_min(1e-12).log() - rest_q.log()), 0.0)
        return kld.clamp_min(0.0), ours.argmax(-1) == self.ids[:, 0]


class FidelityMeter:
    """An observer of :func:`.perplexity.perplexity`'s logits: without a reference it records the model's
    :class:`ReferenceTop` (the dense model's pass), with one it compares each window against it (any other
    model's pass on the same windows), so fidelity costs no forward pass of its own."""

    def __init__(self, reference: ReferenceTop | None = None, k: int = TOP_K) -> None:
        self.reference, self.k = reference, k
        self._recorded: list[ReferenceTop] = []
        self._kld: list[torch.Tensor] = []
        self._same: list[torch.Tensor] = []
        self._seen = 0

    def __call__(self, logits: torch.Tensor) -> None:
        flat = logits.reshape(-1, logits.shape[-1])
        if self.reference is None:
            self._recorded.append(ReferenceTop.of(flat, self.k))
            return
        kld, same = self.reference.part(self._seen, self._seen + flat.shape[0]).compare(flat)
        self._seen += flat.shape[0]
        self._kld.append(kld.cpu())
        self._same.append(same.cpu())

    def recorded(self) -> ReferenceTop:
        return ReferenceTop.cat(self._recorded)

    def fidelity(self) -> Fidelity:
        if self._seen != len(self.reference):
            raise ValueError(f"compared {self._seen} positions of the reference's {len(self.reference)}")
        kld, same = torch.cat(self._kld).double(), torch.cat(self._same).double()
        return Fidelity(float(kld.mean()), float(torch.quantile(kld, 0.99)), float(same.mean()), int(kld.numel()))
