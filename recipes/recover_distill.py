"""Recovery by distillation on Accelerate: a factorized student learns from its dense teacher.

One CPU process:
    python recipes/recover_distill.py --student out/smollm2-r128 --teacher SMOLLM2_DIR --text a.txt b.txt \
        --max-minutes 30 --out out/smollm2-r128-distilled
Several CPU processes on one machine (DDP over gloo; `accelerate launch --cpu --num_processes 2` starts only one
process in accelerate 1.15 unless MPI is set up, so use its torchrun launcher and tell Accelerate it is on CPUs):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 recipes/recover_distill.py ...
Several GPUs (DDP / FSDP), bf16 where the hardware has it:
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/recover_distill.py ... --mixed-precision bf16
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/recover_distill.py ... --train all

--teacher-cache DIR first writes the teacher's top-k logits to DIR (safetensors shards), frees the teacher, and
trains from the cache; --resume continues from the last checkpoint under --out/checkpoints. The model is written
to --out with save_pretrained and loads with AutoModelForCausalLM.from_pretrained after `import hf_factor_embed`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import fields

from hf_factor_embed import FactorEmbedError
from hf_factor_embed.folders import check_output_dir
from hf_factor_embed.recovery import (
    CachedTeacherBlocks,
    DistillConfig,
    cache_teacher_topk,
    distill,
    load_text,
    pack_blocks,
    split_blocks,
)
from hf_factor_embed.recovery.run import SUMMARY_FILE, load_pair


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="a factorized checkpoint folder")
    parser.add_argument("--teacher", required=True, help="the dense model: a folder or a Hub name")
    parser.add_argument("--gguf-file", help="the GGUF file inside --teacher, if it ships one")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", help="plain-text training files")
    source.add_argument("--dataset", help="a datasets name with a text column")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--eval-blocks", type=int, default=8, help="the last blocks of the text, never trained on")
    parser.add_argument("--teacher-cache", help="cache the teacher's top-k logits here and train from the cache")
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")
    for f in fields(DistillConfig):  # every DistillConfig knob, e.g. --max-steps, --lr, --mixed-precision
        if f.name == "output_dir":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif f.name == "log_with":
            parser.add_argument(flag, nargs="*", default=[])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type.split(" ")[0], float)
            parser.add_argument(flag, type=kind, default=f.default)
    return parser.parse_args()


def main() -> None:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    args = parse_args()
    # One per process under a launcher; created before the Accelerator, so it must be told what Accelerator
    # would read itself: without cpu=True a CPU-only launch does not join the process group.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    out = check_output_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    student, teacher, tokenizer = load_pair(args.student, args.teacher, args.gguf_file)
    train, held_back = split_blocks(
        pack_blocks(load_text(args.text, args.dataset), tokenizer, args.block_size), args.eval_blocks
    )
    if args.teacher_cache:
        if state.is_main_process:  # one process writes the shards, the others wait and read them
            cache_teacher_topk(teacher, train, args.teacher_cache, k=args.topk)
        state.wait_for_everyone()
        train, teacher = CachedTeacherBlocks(train, args.teacher_cache), None
        gc.collect()
    settings = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if f.name != "output_dir"}
    launched = state.num_processes > 1
    config = DistillConfig(output_dir=str(out), **settings)
    summary = distill(student, train, held_back, config, teacher=teacher, end_training=not launched)
    if state.is_main_process:
        tokenizer.save_pretrained(out)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
    if launched:
        # Everything is written and every process passed distill's last barrier. A launched worker leaves now,
        # without the process group's teardown or the interpreter's: CI runs hung in both after printing this
        # summary (pytorch/pytorch#75097), the launcher waiting on a worker until killed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except FactorEmbedError as error:  # a user's mistake: one line, no traceback
        sys.exit(f"recover_distill.py: error: {error}")
