"""Recovery by distillation through transformers.Trainer (the DistillationTrainer subclass).

    python recipes/recover_trainer.py --student out/smollm2-r128 --teacher SMOLLM2_DIR --text a.txt \
        --output_dir out/smollm2-r128-trainer --max_steps 200 --per_device_train_batch_size 4 --learning_rate 1e-4

Every TrainingArguments option works (--bf16, --gradient_accumulation_steps, --save_steps,
--resume_from_checkpoint, --report_to tensorboard, ...); under `accelerate launch` or `torchrun` the Trainer
distributes itself. The final model is written to --output_dir with save_pretrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from hf_factor_embed.recovery import finish_student, load_text, pack_blocks, prepare_student, split_blocks
from hf_factor_embed.recovery.run import load_pair
from hf_factor_embed.recovery.trainer import DistillationTrainer


@dataclass
class RecoveryArguments:
    student: str = field(metadata={"help": "a factorized checkpoint folder"})
    teacher: str = field(metadata={"help": "the dense model: a folder or a Hub name"})
    text: list[str] | None = field(default=None, metadata={"help": "plain-text training files"})
    dataset: str | None = field(default=None, metadata={"help": "a datasets name with a text column"})
    gguf_file: str | None = None
    block_size: int = 256
    eval_blocks: int = 8
    train: str = field(default="factors", metadata={"help": "factors, lora or all"})
    temperature: float = 2.0
    lm_weight: float = 0.0


def main() -> None:
    recovery, training = HfArgumentParser((RecoveryArguments, TrainingArguments)).parse_args_into_dataclasses()
    student, teacher, tokenizer = load_pair(recovery.student, recovery.teacher, recovery.gguf_file)
    blocks = pack_blocks(load_text(recovery.text, recovery.dataset), tokenizer, recovery.block_size)
    train, held_back = split_blocks(blocks, recovery.eval_blocks)
    model = prepare_student(student, recovery.train)
    # The blocks carry no labels: name input_ids as the label so that evaluate() computes the distillation loss,
    # and keep only that loss (V-wide logits for every evaluation token would not fit in memory).
    training.label_names = ["input_ids"]
    training.prediction_loss_only = True
    trainer = DistillationTrainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=held_back,
        teacher=teacher,
        temperature=recovery.temperature,
        lm_weight=recovery.lm_weight,
    )
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    print(trainer.evaluate())
    finish_student(trainer.model).save_pretrained(training.output_dir)
    tokenizer.save_pretrained(training.output_dir)


if __name__ == "__main__":
    main()
