"""One process of the FSDP2 check in ``tests/test_recovery_ddp.py`` (run by ``torchrun --nproc_per_node 2``).

A factorized student is sharded with PyTorch's own FSDP2 (``fully_shard`` per decoder layer and at the root, the
layout Accelerate's FSDP2 plugin builds) on CPU processes joined by gloo, trained a few steps towards its teacher,
and gathered into a full state dict that rank 0 saves with ``save_pretrained``.

    torchrun --nproc_per_node 2 tests/scripts/fsdp2_worker.py STUDENT TEACHER OUT
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from hf_factor_embed.recovery.losses import kl_to_teacher
from hf_factor_embed.recovery.trainable import make_shardable


def main(student_dir: str, teacher_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval().requires_grad_(False)
    make_shardable(student)
    for layer in student.model.layers:
        fully_shard(layer)
    fully_shard(student)  # the root unit holds the factors: the embedding and the tied head share them
    factor = student.model.embed_tokens.weight
    report = {
        "tied": student.lm_head.weight is factor,
        "sharded": isinstance(factor, DTensor) and factor.to_local().shape[0] < factor.shape[0],
        "losses": [],
    }
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(rank)  # each process its own blocks, as a sharded loader gives
    for _ in range(8):
        ids = torch.randint(1, student.config.vocab_size, (2, 32), generator=generator)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = kl_to_teacher(student(input_ids=ids).logits, target, 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        report["losses"].append(float(loss))
    state = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        plain = AutoModelForCausalLM.from_pretrained(student_dir)
        plain.save_pretrained(out, state_dict=state)
        with open(f"{out}/fsdp2.json", "w") as file:
            json.dump(report, file)
    dist.barrier()
    # Left without the group's teardown or the interpreter's, as recipes/recover_distill.py leaves: both can hang
    # on two CPU processes (pytorch/pytorch#75097) and would hold the launcher until the test's timeout.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
