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
