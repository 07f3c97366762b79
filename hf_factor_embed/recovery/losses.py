"""Distillation losses: the student's next-token distribution against the teacher's, full or top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) at ``temperature``, times T^2 (Hinton et al.: keeps the
    gradient's scale independent of T)."""
    t = temperature
    student = F.log_softmax(student_logits.float().flatten(0, -2) / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().flatten(0, -2) / t, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


def kl_to_teacher_topk(
    student_logits: torch.Tensor, topk_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """As :func:`kl_to_teacher` with only the teacher's k largest logits cached: the teacher's distribution is
    renormalised over its top k tokens and the student's full distribution is read at those tokens."""
    t = temperature
    student = F.log_softmax(student_logits.float().flatten(0, -2) / t, dim=-1)
    ids = topk_ids.long().flatten(0, -2)
    teacher = F.log_softmax(topk_logits.float().flatten(0, -2) / t, dim=-1)
    kl = (teacher.exp() * (teacher - student.gather(-1, ids))).sum(-1)
    return kl.mean() * t * t


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The language-modelling loss: cross-entropy of each position's logits against the next token."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten())
