"""The teacher's top-k logits on every training block, cached in safetensors shards.

With a cache the teacher runs once, before training, and need not sit beside the student while it trains: the
student's memory is the only model memory during distillation. k = 64 keeps almost all of a small LM's
next-token mass (the rest is renormalised away in :func:`~hf_factor_embed.recovery.losses.kl_to_teacher_topk`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import FactorEmbedError

INDEX_FILE = "teacher_cache.json"


@torch.no_grad()
def cache_teacher_topk(
    teacher: torch.nn.Module,
    blocks,
    out_dir: str | Path,
    *,
    k: int = 64,
    batch_size: int = 4,
    shard_blocks: int = 256,
    progress: bool = True,
) -> Path:
    """Write the teacher's top-``k`` logits (fp16) and token ids (int32) for every block of ``blocks`` (rows
    with ``input_ids``) to ``out_dir``: ``shard-XXXXX.safetensors`` files and an index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    shards, values, ids = [], [], []

    def flush() -> None:
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({"values": torch.cat(values), "ids": torch.cat(ids)}, str(out_dir / name))
        shards.append({"file": name, "blocks": sum(v.shape[0] for v in values)})
        values.clear()
        ids.clear()

    for start in tqdm(range(0, len(blocks), batch_size), desc="teacher top-k", disable=not progress):
        batch = torch.stack(
            [torch.as_tensor(blocks[i]["input_ids"]) for i in range(start, min(start + batch_size, len(blocks)))]
        )
        top = teacher(input_ids=batch.to(device)).logits.float().topk(k, dim=-1)
        values.append(top.values.half().cpu())
        ids.append(top.indices.int().cpu())
        if sum(v.shape[0] for v in values) >= shard_blocks:
            flush()
    if values:
        flush()
    teacher.train(was_training)
    (out_dir / INDEX_FILE).write_text(json.dumps({"k": k, "num_blocks": len(blocks), "shards": shards}, indent=1))
    return out_dir


class CachedTeacherBlocks(Dataset):
    """The training blocks with the teacher's cached top-k beside each: ``input_ids``, ``topk_values``,
    ``topk_ids`` per item, for a DataLoader."""

    def __init__(self, blocks, cache_dir: str | Path) -> None:
        cache_dir = Path(cache_dir)
        index_path = cache_dir / INDEX_FILE
        if not index_path.is_file():
            raise FactorEmbedError(
                f"{cache_dir} holds no teacher cache ({INDEX_FILE}); build it with cache_teacher_topk"
            )
        index = json.loads(index_path.read_text())
        if index["num_blocks"] != len(blocks):
            raise FactorEmbedError(
                f"the teacher cache covers {index['num_blocks']} blocks but the training text has {len(blocks)}; "
                "rebuild the cache for this text"
            )
        shards = [load_file(str(cache_dir / s["file"])) for s in index["shards"]]
        self.values = torch.cat([s["values"] for s in shards])
        self.ids = torch.cat([s["ids"] for s in shards])
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.as_tensor(self.blocks[i]["input_ids"]),
            "topk_values": self.values[i],
            "topk_ids": self.ids[i],
        }
