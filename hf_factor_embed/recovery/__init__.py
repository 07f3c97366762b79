"""Recovery after factorization: cheap refits on cached teacher signals, and distillation on Accelerate or Trainer.

Not imported by ``import hf_factor_embed``: it pulls in ``datasets`` and, when training, ``accelerate`` / PEFT.

* :mod:`.data`: text through ``datasets``, packed into fixed-length blocks; evaluation blocks held back.
* :mod:`.generate`: text the teacher writes itself (varied starts, batched sampling, cached as a Dataset).
* :mod:`.cheap`: refit the factors to the teacher's head inputs and embedding, no backprop through the network.
* :mod:`.distill`: the Accelerate loop (KL with a temperature, optional LM and hidden-state terms).
* :mod:`.teacher_cache`: the teacher's top-k logits in safetensors shards, so it need not sit beside the student.
* :mod:`.trainer`: the same loss as a ``transformers.Trainer`` subclass.
* :mod:`.trainable`: what trains (factors, factors + LoRA, all) and merging LoRA back before saving.
* :mod:`.run`: the end-to-end ``recover`` used by the command line and the recipes.
"""

from .cheap import CheapRefitConfig, TeacherSignals, cheap_refit, collect_teacher_signals
from .data import load_text, pack_blocks, split_blocks
from .distill import DistillConfig, distill
from .generate import GenerationConfig, self_generate
from .losses import kl_to_teacher, kl_to_teacher_topk, next_token_loss
from .teacher_cache import CachedTeacherBlocks, cache_teacher_topk
from .trainable import TRAIN_MODES, factor_parameters, finish_student, prepare_student

__all__ = [
    "TRAIN_MODES",
    "CachedTeacherBlocks",
    "CheapRefitConfig",
    "DistillConfig",
    "GenerationConfig",
    "TeacherSignals",
    "cache_teacher_topk",
    "cheap_refit",
    "collect_teacher_signals",
    "distill",
    "factor_parameters",
    "finish_student",
    "kl_to_teacher",
    "kl_to_teacher_topk",
    "load_text",
    "next_token_loss",
    "pack_blocks",
    "prepare_student",
    "self_generate",
    "split_blocks",
]
