"""Recovery by distillation on Accelerate: a factorized student learns from its dense teacher.

One CPU process:
    python recipes/recover_distill.py --student out/smollm2-r128 --teacher SMOLLM2_DIR --text a.txt b.txt \
        --max-minutes 30 --out out/smollm2-r128-distilled
Several processes or GPUs (DDP / FSDP), bf16 where the hardware has it:
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
from dataclasses import fields

from hf_factor_embed.recovery import (
    CachedTeacherBlocks,
    DistillConfig,
    cache_teacher_topk,
    distill,
    load_text,
    pack_blocks,
    split_blocks,
)
from hf_factor_embed.recovery.run import load_pair


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
    args = parse_args()
    student, teacher, tokenizer = load_pair(args.student, args.teacher, args.gguf_file)
    train, held_back = split_blocks(
        pack_blocks(load_text(args.text, args.dataset), tokenizer, args.block_size), args.eval_blocks
    )
    if args.teacher_cache:
        cache_teacher_topk(teacher, train, args.teacher_cache, k=args.topk)
        train, teacher = CachedTeacherBlocks(train, args.teacher_cache), None
        gc.collect()
    settings = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if f.name != "output_dir"}
    summary = distill(student, train, held_back, DistillConfig(output_dir=args.out, **settings), teacher=teacher)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({k: v for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    main()
