"""Distillation through ``transformers.Trainer``: the same loss as the Accelerate loop, in a Trainer subclass."""

from __future__ import annotations

import torch
from transformers import Trainer

from .losses import kl_to_teacher, next_token_loss


class DistillationTrainer(Trainer):
    """A Trainer whose loss is ``kd_weight * KL(teacher || student) + lm_weight * LM loss``.

    Everything else (optimiser, schedule, accumulation, mixed precision, checkpoints, ``resume_from_checkpoint``,
    logging, distribution) is the Trainer's own, set through ``TrainingArguments``. The teacher is moved to the
    student's device on first use and never trains.
    """

    def __init__(
        self,
        *args,
        teacher: torch.nn.Module,
        temperature: float = 2.0,
        kd_weight: float = 1.0,
        lm_weight: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.kd_weight = kd_weight
        self.lm_weight = lm_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["input_ids"]
        outputs = model(input_ids=ids, attention_mask=inputs.get("attention_mask"))
        device = outputs.logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=ids, attention_mask=inputs.get("attention_mask")).logits
        loss = self.kd_weight * kl_to_teacher(outputs.logits, teacher_logits, self.temperature)
        if self.lm_weight > 0:
            loss = loss + self.lm_weight * next_token_loss(outputs.logits, ids)
        return (loss, outputs) if return_outputs else loss
