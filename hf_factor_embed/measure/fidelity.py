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
import torch.nn.functional as F

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


#: Where dense's logits cannot be recomputed from its head (a model that changes them after the head), the
#: reference keeps its most likely next tokens at each position instead, the rest of the mass as one more outcome:
#: a lower bound of the KL divergence (on Gemma-3's held-back pydoc, 1,024 tokens give 0.0119 of the full 0.0139).
TOP_K = 1024


@dataclass(frozen=True)
class DenseHead:
    """Dense's next-token distributions at each scored position, exact, in megabytes: its final hidden states and a
    copy of its output head (the head is one matrix; V-wide logits for thousands of positions are gigabytes)."""

    hidden: torch.Tensor  # (positions, d)
    weight: torch.Tensor  # (V, d), copied before the model changes
    bias: torch.Tensor | None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def compare(self, start: int, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reference = F.linear(self.hidden[start : start + logits.shape[0]].to(self.weight.dtype), self.weight, self.bias)
        return position_stats(reference, logits)


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

    def __len__(self) -> int:
        return self.ids.shape[0]

    def compare(self, start: int, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL(reference || model) per position over the kept tokens and the rest, whether the model's top token
        is the reference's) for the model's ``logits`` (positions, V) at positions ``start`` on."""
        logprobs, ids = self.logprobs[start : start + logits.shape[0]], self.ids[start : start + logits.shape[0]]
        ours = torch.log_softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
        kept = ours.gather(1, ids)
        p = logprobs.exp()
        kld = (p * (logprobs - kept)).sum(-1)
        rest_p = (1 - p.sum(-1)).clamp_min(0)
        rest_q = (1 - kept.exp().sum(-1)).clamp_min(1e-12)
        kld = kld + torch.where(rest_p > 0, rest_p * (rest_p.clamp_min(1e-12).log() - rest_q.log()), 0.0)
        return kld.clamp_min(0.0), ours.argmax(-1) == ids[:, 0]


class FidelityMeter:
    """An observer of :func:`.perplexity.perplexity`'s logits. :meth:`recording` the dense model's pass, it keeps
    what dense's distributions need (:class:`DenseHead`, or :class:`ReferenceTop` where the logits are not the
    head's plain output); given that reference, it compares each window of any other model's pass on the same
    windows. Fidelity costs no forward pass of its own."""

    def __init__(self, reference: DenseHead | ReferenceTop | None = None, k: int = TOP_K) -> None:
        self.reference, self.k = reference, k
        self._head = self._hook = self._last = None
        self._exact = True
        self._hidden: list[torch.Tensor] = []
        self._top: list[ReferenceTop] = []
        self._kld: list[torch.Tensor] = []
        self._same: list[torch.Tensor] = []
        self._seen = 0

    @classmethod
    def recording(cls, model, head: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> FidelityMeter:
        """A meter that records ``model``'s pass; ``head``: a copy of its output head's (weight, bias), shared
        between meters (:func:`head_copy`)."""
        meter = cls()
        meter._head = head if head is not None else head_copy(model)
        meter._hook = model.get_output_embeddings().register_forward_hook(meter._keep_input)
        return meter

    def _keep_input(self, module, args, output) -> None:
        self._last = args[0].detach()

    def __call__(self, logits: torch.Tensor) -> None:
        flat = logits.reshape(-1, logits.shape[-1])
        if self.reference is not None:
            kld, same = self.reference.compare(self._seen, flat)
            self._kld.append(kld.cpu())
            self._same.append(same.cpu())
        else:
            self._record(logits, flat)
        self._seen += flat.shape[0]

    def _record(self, logits: torch.Tensor, flat: torch.Tensor) -> None:
        """Dense's hidden states where its logits are its head's output (checked on every batch), its top tokens
        in any case (the fallback, decided once the pass is over)."""
        self._top.append(ReferenceTop.of(flat, self.k))
        if self._head is None or self._last is None:
            self._exact = False
            return
        hidden = self._last[:, : logits.shape[1]].reshape(-1, self._last.shape[-1])
        recomputed = F.linear(hidden.to(self._head[0].dtype), *self._head).float()
        self._exact = self._exact and torch.allclose(recomputed, flat.float(), rtol=1e-3, atol=1e-3)
        self._hidden.append(hidden.cpu())

    def recorded(self) -> DenseHead | ReferenceTop:
        """What the recording pass kept: exact (:class:`DenseHead`) where it could, else the top tokens."""
        if self._hook is not None:
            self._hook.remove()
        if self._exact and self._hidden:
            return DenseHead(torch.cat(self._hidden), *self._head)
        return ReferenceTop(torch.cat([t.logprobs for t in self._top]), torch.cat([t.ids for t in self._top]))

    def fidelity(self) -> Fidelity:
        if self._seen != len(self.reference):
            raise ValueError(f"compared {self._seen} positions of the reference's {len(self.reference)}")
        kld, same = torch.cat(self._kld).double(), torch.cat(self._same).double()
        return Fidelity(float(kld.mean()), float(torch.quantile(kld, 0.99)), float(same.mean()), int(kld.numel()))


def head_copy(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A copy of ``model``'s output head (weight, bias) as it is now: later swaps and patches leave it alone."""
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight.detach().clone(), None if bias is None else bias.detach().clone()
