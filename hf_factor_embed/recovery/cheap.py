"""Cheap recovery: refit the factors against cached teacher signals, with no backpropagation through the network.

The teacher runs once over the text; what is kept is what each factorized layer needs to be judged on its own:

* the head: the hidden states the teacher's head reads (n x d). The teacher's logits are ``h @ W.T`` with its
  dense head ``W``, so they are recomputed per batch rather than stored (V floats per position would be 200 KB
  for SmolLM2). The student head is fitted to them with the distillation KL.
* the input side: the token ids those positions read, and the teacher's dense embedding. The student's rows are
  fitted to the teacher's in relative squared error (what the first layer's normalisation sees), weighted by
  how often each token occurs.

For a tied model both losses act on the one pair of factors (and the band); untied, each on its own. Only the
small factor matrices receive gradients, so a step costs two V x d head products; SmolLM2 takes minutes on a
laptop CPU. What it cannot do: move the transformer blocks, or correct the student's hidden states drifting away
from the teacher's (the head is fitted to the teacher's, not the student's): that is distillation's job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import get_adapter
from ..calibration.collect import iter_head_inputs
from ..calibration.model_text import model_windows
from ..config import OUTPUT
from ..errors import FactorEmbedError
from ..layers.factorized import FactorizedLayer
from .losses import kl_to_teacher
from .trainable import FACTOR_TENSORS, factor_parameters

logger = logging.getLogger(__name__)


@dataclass
class TeacherSignals:
    """What the teacher shows the factors: its head inputs, the tokens read there, and its dense matrices."""

    hidden: torch.Tensor  # (n, d) head inputs, float32
    token_ids: torch.Tensor  # (n,) the input token at each of those positions
    head_weight: torch.Tensor  # (V, d)
    head_bias: torch.Tensor | None
    embedding_weight: torch.Tensor  # (V, d)


@torch.no_grad()
def collect_teacher_signals(
    teacher: nn.Module,
    token_ids: torch.Tensor,
    *,
    window: int = 512,
    batch_size: int = 4,
    progress: bool = True,
    bos_id: int | None = None,
) -> TeacherSignals:
    """Run the dense teacher once over ``token_ids`` (``window``-token windows) and keep its head inputs.

    ``bos_id``: put first in every window, as the tokenizer feeds text
    (:func:`hf_factor_embed.calibration.model_text.bos_prefix`); leave None for ids already framed that way
    (:func:`.data.pack_blocks`' blocks begin with it)."""
    adapter = get_adapter(teacher)
    head, embedding = adapter.get(teacher, OUTPUT), adapter.input_embedding(teacher)
    if head is None or isinstance(head, FactorizedLayer) or isinstance(embedding, FactorizedLayer):
        raise FactorEmbedError("the teacher must be the dense model with an output head (not the factorized student)")
    ids = token_ids.reshape(-1)
    if ids.numel() < 2:
        raise FactorEmbedError("cheap recovery needs text: give at least a few hundred tokens")
    hidden = torch.cat(
        [
            h.reshape(-1, h.shape[-1]).float().cpu()
            for h in iter_head_inputs(
                teacher, ids, window=window, batch_size=batch_size, progress=progress, desc="teacher", bos_id=bos_id
            )
        ]
    )
    bias = getattr(head, "bias", None)
    # The teacher's own tensors, not copies (no copy at all for an fp32 CPU teacher): the signals are read-only,
    # and a caller that drops the teacher afterwards keeps only these, once (a tied teacher shares one).
    return TeacherSignals(
        hidden=hidden,
        token_ids=model_windows(ids, window, bos_id).reshape(-1)[: hidden.shape[0]].clone(),  # the ids read
        head_weight=head.weight.detach().float().cpu(),
        head_bias=None if bias is None else bias.detach().float().cpu(),
        embedding_weight=embedding.weight.detach().float().cpu(),
    )


@dataclass
class CheapRefitConfig:
    """Settings of :func:`cheap_refit`. ``lr``: on SmolLM2 r=128 (300 steps), 3e-4 lowered the head KL most
    (0.060 -> 0.024, against 0.030 at 1e-4 and no drop at 1e-3)."""

    steps: int = 300
    batch_positions: int = 256
    lr: float = 3e-4
    temperature: float = 1.0
    input_weight: float = 1.0
    max_minutes: float | None = None
    seed: int = 0
    #: Which factor tensors train (:data:`.trainable.FACTOR_TENSORS`); ``("codebooks",)`` moves only a product-coded
    #: tail's centroids, which the checkpoint stores in float, so nothing is rounded again on save.
    tensors: tuple[str, ...] = FACTOR_TENSORS


def cheap_refit(student: nn.Module, signals: TeacherSignals, config: CheapRefitConfig | None = None) -> dict:
    """Refit the student's factors (in place) to the teacher's signals; returns the losses before and after."""
    config = config or CheapRefitConfig()
    adapter = get_adapter(student)
    head, embedding = adapter.get(student, OUTPUT), adapter.input_embedding(student)
    head = head if isinstance(head, FactorizedLayer) else None
    embedding = embedding if isinstance(embedding, FactorizedLayer) else None
    if head is None and embedding is None:
        raise FactorEmbedError("the student has no factorized embedding or head; patch it first")
    params = factor_parameters(student, config.tensors)
    if not params:
        raise FactorEmbedError(f"the student holds none of {config.tensors}; name tensors its layers have")
    trainable_before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    device = params[0].device
    scale = getattr(embedding, "embed_scale", None) or 1.0
    deadline = None if config.max_minutes is None else time.perf_counter() + 60 * config.max_minutes

    def losses(positions: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if head is not None:
            h = signals.hidden[positions].to(device, head.basis.dtype)
            teacher_logits = torch.nn.functional.linear(
                h.float(), signals.head_weight.to(device), _to(signals.head_bias, device)
            )
            out["head_kl"] = kl_to_teacher(head(h), teacher_logits, config.temperature)
        if embedding is not None:
            ids = signals.token_ids[positions].to(device)
            target = signals.embedding_weight.to(device)[ids] * scale
            err = (embedding(ids).float() - target).pow(2).sum(-1) / target.pow(2).sum(-1).clamp_min(1e-12)
            out["input_rel_err"] = err.mean()
        return out

    n = signals.hidden.shape[0]
    probe = torch.randperm(n, generator=generator)[: 4 * config.batch_positions]

    @torch.no_grad()
    def probe_losses() -> dict[str, float]:
        # in training-batch-sized chunks: V logits per position, so a whole probe at once would set the peak
        chunks = [losses(c) for c in probe.split(config.batch_positions)]
        return {k: sum(float(c[k]) for c in chunks) / len(chunks) for k in chunks[0]}

    before = probe_losses()
    started, steps = time.perf_counter(), 0
    student_was_training = student.training
    student.eval()  # dropout off: the factors are fitted to deterministic signals
    while steps < config.steps:
        steps += 1
        parts = losses(torch.randint(0, n, (config.batch_positions,), generator=generator))
        loss = parts.get("head_kl", 0.0) + config.input_weight * parts.get("input_rel_err", 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if deadline is not None and time.perf_counter() > deadline:
            break
    after = probe_losses()
    student.train(student_was_training)
    for p, flag in zip(params, trainable_before, strict=True):
        p.requires_grad_(flag)
    seconds = time.perf_counter() - started
    logger.info("cheap refit: %d steps in %.1f s, %s -> %s", steps, seconds, before, after)
    return {"steps": steps, "seconds": seconds, "positions": n, "before": before, "after": after}


def _to(tensor: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)
