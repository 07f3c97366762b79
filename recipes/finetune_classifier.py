"""Fine-tune a factorized BERT for sequence classification with transformers.Trainer, beside the dense model.

    python recipes/finetune_classifier.py --model MINILM_DIR --local-sources --rank 64 --out out/minilm-cls
    python recipes/finetune_classifier.py --model bert-base-uncased --dataset imdb --rank 128 --out out/bert-imdb

Three accuracies on the held-out split, each after the same number of Trainer steps:
  dense: the dense encoder fine-tuned;
  factorized: that fine-tuned model's embeddings factorized, no further training (training-free);
  factorized + fine-tuned: the factorized model fine-tuned again (factors and the rest).
--local-sources builds a real labelled set without the Hub: lines of three kinds of text that ship with Python and
Debian (hf_factor_embed.calibration.data: Python's reference, software licenses, Debian changelogs), each labelled with
its
source, split by position in each text (the first 80% train, the last 20% test). Writes --out/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

import hf_factor_embed as hfe
from hf_factor_embed.calibration.data import TEXT_SOURCES, source_text


def local_sources_dataset(lines_per_source: int = 600, min_words: int = 6) -> DatasetDict:
    """Lines of at least ``min_words`` words from each local source, labelled by source; train/test by position."""
    splits: dict[str, list] = {"train": [], "test": []}
    for label, name in enumerate(TEXT_SOURCES):
        lines = [" ".join(line.split()) for line in source_text(name).splitlines() if len(line.split()) >= min_words]
        step = max(1, len(lines) // lines_per_source)
        picked = lines[::step][:lines_per_source]
        cut = int(0.8 * len(picked))
        splits["train"] += [(t, label) for t in picked[:cut]]
        splits["test"] += [(t, label) for t in picked[cut:]]
    features_label = ClassLabel(names=list(TEXT_SOURCES))
    return DatasetDict(
        {
            split: Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}).cast_column(
                "label", features_label
            )
            for split, rows in splits.items()
        }
    )


def accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def train_and_evaluate(model, data: DatasetDict, tokenizer, out: Path, args) -> float:
    training = TrainingArguments(
        output_dir=str(out),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.lr,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, args.max_steps // 10),
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        compute_metrics=accuracy,
    )
    if args.max_steps > 0:
        trainer.train()
    return trainer.evaluate()["eval_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a BERT-like encoder: a folder or a Hub name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--local-sources", action="store_true", help="the labelled set built from local text")
    source.add_argument("--dataset", help="a datasets name with text/label columns and train/test splits (imdb)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    data = local_sources_dataset() if args.local_sources else load_dataset(args.dataset)
    num_labels = data["train"].features["label"].num_classes
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True)

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    results = {"dense": train_and_evaluate(model, data, tokenizer, args.out / "dense", args)}
    # Factorize the fine-tuned encoder, calibrated on the training text only.
    hfe.patch_model(model, rank=args.rank, calibration=data["train"], tokenizer=tokenizer)
    results["factorized"] = train_and_evaluate(
        model, data, tokenizer, args.out / "factorized", argparse.Namespace(**{**vars(args), "max_steps": 0})
    )
    results["factorized + fine-tuned"] = train_and_evaluate(model, data, tokenizer, args.out / "finetuned", args)
    model.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    summary = {
        "model": args.model,
        "rank": args.rank,
        "max_steps": args.max_steps,
        "train": len(data["train"]),
        "test": len(data["test"]),
        "accuracy": results,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
