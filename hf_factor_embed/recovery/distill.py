"""Distillation on Accelerate: a factorized student learns the dense teacher's next-token distribution.

The same loop runs as plain ``python`` on one CPU process and under ``accelerate launch`` on several processes or
GPUs (DDP, FSDP): Accelerate owns devices, mixed precision, gradient accumulation, data sharding, checkpoints and
logging; this module only says what the loss is and when to stop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import FactorEmbedError
from .losses import kl_to_teacher, kl_to_teacher_topk, next_token_loss
from .trainable import factor_parameters, finish_student, make_shardable, prepare_student

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass
class DistillConfig:
    """What :func:`distill` trains, for how long, and where it writes."""

    output_dir: str
    train: str = "factors"  # "factors", "lora" (factors + PEFT LoRA) or "all"
    max_steps: int = 1000
    max_minutes: float | None = None
    max_tokens: int | None = None
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4  # the factors' learning rate
    # LoRA adapters learn at ``lr``; with train="all" the pretrained blocks learn at lr * block_lr_scale, the
    # usual full fine-tuning rate being a tenth of what a freshly fitted factor or adapter takes.
    block_lr_scale: float = 0.1
    weight_decay: float = 0.0
    warmup_steps: int = 20
    temperature: float = 2.0
    kd_weight: float = 1.0
    lm_weight: float = 0.0
    hidden_weight: float = 0.0
    lora_rank: int = 16
    mixed_precision: str = "no"  # "no", "bf16", "fp16": Accelerate's choices
    checkpoint_every: int = 100
    eval_every: int = 100
    resume: bool = False
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers beside the JSON lines, e.g. tensorboard
    seed: int = 0


class JsonLinesTracker:
    """An Accelerate tracker writing one JSON object per ``log`` call to ``<dir>/log.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, logging_dir: str | Path) -> None:
        self.path = Path(logging_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def start(self) -> None:
        pass

    def store_init_configuration(self, values: dict) -> None:
        self.log({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")

    def finish(self) -> None:
        pass


class _Progress:
    """Steps and tokens done, saved with every Accelerate checkpoint so that ``resume`` continues the count."""

    def __init__(self) -> None:
        self.steps = 0
        self.tokens = 0
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.tokens, self.seconds = state["steps"], state["tokens"], state["seconds"]


def _make_tracker_class():
    # Subclassed at call time: accelerate is imported only when distillation runs.
    from accelerate.tracking import GeneralTracker

    return type("JsonLinesGeneralTracker", (JsonLinesTracker, GeneralTracker), {})


def distill(student, train_data, eval_data, config: DistillConfig, *, teacher=None, end_training: bool = True) -> dict:
    """Train ``student`` (a factorized model) towards ``teacher`` on ``train_data``; save it to
    ``config.output_dir`` with ``save_pretrained`` (beside ``checkpoints/`` and ``log.jsonl``); return a summary
    (steps, tokens, seconds, evaluations).

    ``train_data`` yields ``input_ids`` blocks; with a teacher top-k cache
    (:class:`~hf_factor_embed.recovery.teacher_cache.CachedTeacherBlocks`) it also yields ``topk_values`` /
    ``topk_ids`` and ``teacher`` may be None. ``eval_data`` (blocks) gives the perplexity logged every
    ``eval_every`` steps and at the end.

    ``end_training`` calls ``accelerator.end_training()`` last (trackers finished, the process group destroyed).
    A launched worker that leaves by ``os._exit`` once the summary is written passes False: its trackers are
    finished and every process has passed a last barrier, and it skips the group's teardown, which can hang
    (pytorch/pytorch#75097; seen twice in this project's CI on two CPU processes).
    """
    run = _prepare(student, train_data, eval_data, config, teacher)
    done, evaluations = _train(run, config)
    accelerator, model = run.accelerator, run.model
    if not evaluations or evaluations[-1]["step"] != run.progress.steps:
        evaluations.append(_evaluate(accelerator, model, run.eval_loader, run.progress))
    in_sync = _replicas_in_sync(accelerator, run.params)
    _save(accelerator, model, Path(config.output_dir))
    if end_training:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return {
        "stopped_by": done,
        **run.progress.state_dict(),
        "processes": accelerator.num_processes,
        "distributed_type": str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)),
        "replicas_in_sync": in_sync,
        "evaluations": evaluations,
    }


@dataclass
class _Run:
    """A distillation run prepared by Accelerate: what the training loop reads."""

    accelerator: object
    model: torch.nn.Module
    teacher: torch.nn.Module | None
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    eval_loader: DataLoader
    progress: _Progress


def _prepare(student, train_data, eval_data, config: DistillConfig, teacher) -> _Run:
    """Check the data, build the accelerator, optimizer and loaders, prepare them, resume where asked."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(config.output_dir)
    cached = "topk_ids" in train_data[0]
    if teacher is None and not cached:
        raise FactorEmbedError("distillation needs a teacher model or a teacher top-k cache")
    needs_teacher_forward = not cached or config.hidden_weight > 0
    if needs_teacher_forward and teacher is None:
        raise FactorEmbedError("hidden_weight > 0 needs the teacher model itself, not only its top-k cache")
    tracker = _make_tracker_class()(out)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=[tracker, *config.log_with],
        project_dir=str(out),
    )
    set_seed(config.seed)
    model = prepare_student(student, config.train, lora_rank=config.lora_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(model, params, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    train_loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, drop_last=True)
    eval_loader = DataLoader(eval_data, batch_size=config.batch_size)
    if len(train_loader) == 0:
        raise FactorEmbedError(f"fewer training blocks ({len(train_data)}) than batch_size={config.batch_size}")
    if accelerator.distributed_type == "FSDP":
        make_shardable(model)  # before prepare: FSDP2 refuses the head's column-major factors
    model, optimizer, scheduler, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, scheduler, train_loader, eval_loader
    )
    if needs_teacher_forward:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    progress = _Progress()
    accelerator.register_for_checkpointing(progress)
    if config.resume:
        _resume(accelerator, out)
    accelerator.init_trackers("distill", config={k: str(v) for k, v in asdict(config).items()})
    return _Run(accelerator, model, teacher, params, optimizer, scheduler, train_loader, eval_loader, progress)


def _train(run: _Run, config: DistillConfig) -> tuple[str, list[dict]]:
    """Steps until a limit stops the run (:func:`_stop_reason`); returns why it stopped and the evaluations."""
    accelerator, model, progress, train_loader = run.accelerator, run.model, run.progress, run.train_loader
    out = Path(config.output_dir)
    evaluations = []
    started = time.perf_counter() - progress.seconds
    bar = tqdm(total=config.max_steps, initial=progress.steps, desc="distill", disable=not accelerator.is_main_process)
    done = _stop_reason(progress, config, started)
    epoch = 0
    while done is None:
        loader = train_loader
        skip = progress.steps * config.gradient_accumulation_steps % len(train_loader) if epoch == 0 else 0
        if skip:  # resumed mid-epoch: continue where the checkpoint was taken, not from the epoch's start
            loader = accelerator.skip_first_batches(train_loader, skip)
        if hasattr(train_loader, "set_epoch"):  # a new shuffle each epoch, the same on every process
            train_loader.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                loss, parts = _loss(model, run.teacher, batch, config)
                accelerator.backward(loss)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            progress.tokens += batch["input_ids"].numel() * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            progress.steps += 1
            progress.seconds = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            accelerator.log({"loss": float(loss.detach()), **parts, "tokens": progress.tokens}, step=progress.steps)
            if progress.steps % config.eval_every == 0:
                evaluations.append(_evaluate(accelerator, model, run.eval_loader, progress))
            if progress.steps % config.checkpoint_every == 0:
                accelerator.save_state(str(out / CHECKPOINTS / f"step-{progress.steps:07d}"))
            done = _stop_reason(progress, config, started)
            if done is not None:
                break
        epoch += 1
    bar.close()
    return done, evaluations


def _param_groups(model, params: list, config: DistillConfig) -> list[dict]:
    """The factors (and LoRA adapters) at ``lr``; with ``train="all"``, the pretrained rest at a scaled rate."""
    if config.train != "all":
        return [{"params": params}]
    factors = {id(p) for p in factor_parameters(model)}
    rest = [p for p in params if id(p) not in factors]
    return [
        {"params": [p for p in params if id(p) in factors]},
        {"params": rest, "lr": config.lr * config.block_lr_scale},
    ]


def _loss(model, teacher, batch: dict, config: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    ids = batch["input_ids"]
    want_hidden = config.hidden_weight > 0
    student_out = model(input_ids=ids, output_hidden_states=want_hidden)
    parts: dict[str, torch.Tensor] = {}
    teacher_out = None
    if teacher is not None and ("topk_ids" not in batch or want_hidden):
        with torch.no_grad():
            teacher_out = teacher(input_ids=ids, output_hidden_states=want_hidden)
    if "topk_ids" in batch:
        parts["kd"] = kl_to_teacher_topk(
            student_out.logits, batch["topk_values"], batch["topk_ids"], config.temperature
        )
    else:
        parts["kd"] = kl_to_teacher(student_out.logits, teacher_out.logits, config.temperature)
    loss = config.kd_weight * parts["kd"]
    if config.lm_weight > 0:
        parts["lm"] = next_token_loss(student_out.logits, ids)
        loss = loss + config.lm_weight * parts["lm"]
    if want_hidden:
        parts["hidden"] = torch.nn.functional.mse_loss(
            student_out.hidden_states[-1].float(), teacher_out.hidden_states[-1].float()
        )
        loss = loss + config.hidden_weight * parts["hidden"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def _evaluate(accelerator, model, eval_loader, progress: _Progress) -> dict:
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for batch in eval_loader:
        ids = batch["input_ids"]
        loss = next_token_loss(model(input_ids=ids).logits, ids)
        n = ids[:, 1:].numel()
        total += torch.tensor([float(loss) * n, n], device=accelerator.device, dtype=torch.float64)
    total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    result = {"step": progress.steps, "tokens": progress.tokens, "eval_perplexity": math.exp(total[0] / total[1])}
    accelerator.log({"eval_perplexity": result["eval_perplexity"]}, step=progress.steps)
    return result


@torch.no_grad()
def _replicas_in_sync(accelerator, params: list[torch.Tensor]) -> bool:
    """Whether every process ended with the same trainable weights, i.e. the gradients were synchronised."""
    if accelerator.num_processes == 1 or accelerator.distributed_type == "FSDP":  # FSDP shards: nothing to compare
        return True
    flat = torch.cat([p.detach().float().reshape(-1) for p in params])
    position_weights = torch.arange(flat.numel(), device=flat.device) % 7  # sees swapped entries too
    fingerprint = torch.stack([flat.sum(), flat.pow(2).sum(), (flat * position_weights).sum()])
    every = accelerator.gather(fingerprint.to(accelerator.device)[None]).cpu()
    return bool(torch.allclose(every, every[:1].expand_as(every), rtol=1e-6, atol=1e-6))


def _stop_reason(progress: _Progress, config: DistillConfig, started: float) -> str | None:
    if progress.steps >= config.max_steps:
        return "max_steps"
    if config.max_tokens is not None and progress.tokens >= config.max_tokens:
        return "max_tokens"
    if config.max_minutes is not None and time.perf_counter() - started >= 60 * config.max_minutes:
        return "max_minutes"
    return None


def _resume(accelerator, out: Path) -> None:
    checkpoints = sorted((out / CHECKPOINTS).glob("step-*"))
    if not checkpoints:
        raise FactorEmbedError(f"--resume: no checkpoint under {out / CHECKPOINTS}; start without --resume")
    accelerator.load_state(str(checkpoints[-1]))
    logger.info("resumed from %s", checkpoints[-1])


def _save(accelerator, model, out: Path) -> None:
    """The student through ``save_pretrained`` (LoRA merged), so it reloads with ``from_pretrained``."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model) if accelerator.distributed_type == "FSDP" else None
    student = finish_student(accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        student.save_pretrained(str(out), state_dict=state_dict)
    accelerator.wait_for_everyone()
