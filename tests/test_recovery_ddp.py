"""The distillation recipe on two CPU processes under ``accelerate launch``: both processes train in step, the
result reloads, ``--resume`` continues; and the recipe's user errors.

``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.15 (its CPU launcher fans out only
through ``mpirun``); two CPU processes on one machine are started through the torchrun launcher
(``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``, which makes Accelerate join them with gloo.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_words
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed.quantizer.structure import factorized_layers

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "recover_distill.py")
FSDP_CONFIG = ROOT / "recipes" / "accelerate" / "fsdp.yaml"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(student folder, teacher folder with a tokenizer, a training text of 4,000 words)."""
    root = tmp_path_factory.mktemp("ddp")
    teacher = tiny_llama()
    with torch.no_grad():  # a random model's next-token distribution is near uniform; peaked, it has more to teach
        teacher.model.embed_tokens.weight.mul_(20)
    teacher.save_pretrained(root / "teacher")
    tiny_tokenizer().save_pretrained(root / "teacher")
    hfe.patch_model(copy.deepcopy(teacher), rank=8, method="svd").save_pretrained(root / "student")
    (root / "train.txt").write_text(tiny_words(4000))
    return root / "student", root / "teacher", root / "train.txt"


def free_port() -> str:
    """A port nothing listens on now, for a launch's rendezvous. Launchers default to 29500: two launches at once on
    one machine (two test sessions; CI beside a developer's run) would join each other's process group, and one such
    run here hung until its timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--main_process_port", free_port()]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", RECIPE, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def kd_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["kd"] for r in lines if "kd" in r}


def test_two_processes_train_in_step_save_reload_and_resume(tiny_pair, tmp_path):
    student, teacher, text = tiny_pair
    out = tmp_path / "out"
    common = ["--student", str(student), "--teacher", str(teacher), "--text", str(text), "--out", str(out)]
    common += ["--block-size", "32", "--eval-blocks", "4", "--batch-size", "2", "--lr", "0.01", "--temperature", "1"]
    common += ["--warmup-steps", "1", "--checkpoint-every", "10", "--eval-every", "10"]
    first = launch(*common, "--max-steps", "40")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "recovery.json").read_text())
    assert summary["processes"] == 2 and summary["replicas_in_sync"] is True
    # 2 processes x 2 blocks x 32 tokens per step: the token count says both took part
    assert summary["steps"] == 40 and summary["tokens"] == 40 * 2 * 2 * 32
    losses = kd_losses(out)
    assert sorted(losses) == list(range(1, 41))
    assert sum(losses[s] for s in range(36, 41)) < 0.5 * sum(losses[s] for s in range(1, 6))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(factorized_layers(model)) == 2 and model.lm_head.weight is model.model.embed_tokens.weight

    resumed = launch(*common, "--max-steps", "44", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "recovery.json").read_text())
    assert summary["steps"] == 44 and summary["tokens"] == 44 * 2 * 2 * 32
    assert sorted(kd_losses(out)) == list(range(1, 45))  # 41..44 appended after the checkpoint at step 40


def test_the_shipped_fsdp_config_on_two_cpu_processes(tiny_pair, tmp_path):
    # The FSDP2 config as shipped, on two CPU processes joined by gloo (only the GPU settings overridden). Accelerate
    # 1.15 turns a config's FSDP on only for accelerator process groups (AcceleratorState: MULTI_GPU, MULTI_XPU, ...;
    # never MULTI_CPU), so on CPUs the same config trains replicated over gloo: FSDP itself runs only on GPUs. This
    # checks that the shipped config still runs, trains and saves a tied checkpoint there, and flags the day
    # Accelerate starts sharding on CPUs.
    student, teacher, text = tiny_pair
    out = tmp_path / "fsdp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)]
    command += ["--num_processes", "2", "--main_process_port", free_port(), "--mixed_precision", "no"]
    command += [RECIPE, "--student", str(student)]
    command += ["--teacher", str(teacher), "--text", str(text), "--out", str(out), "--block-size", "32"]
    command += ["--eval-blocks", "4", "--batch-size", "2", "--lr", "0.01", "--max-steps", "3", "--train", "all"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "recovery.json").read_text())
    assert summary["distributed_type"] == "MULTI_CPU" and summary["processes"] == 2 and summary["steps"] == 3
    assert summary["replicas_in_sync"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(factorized_layers(model)) == 2 and model.lm_head.weight is model.model.embed_tokens.weight
    before = AutoModelForCausalLM.from_pretrained(student)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)


def run_recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RECIPE, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_recipe_refuses_a_folder_that_holds_another_model(tiny_pair, tmp_path):
    student, teacher, text = tiny_pair
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    result = run_recipe(
        "--student",
        str(student),
        "--teacher",
        str(teacher),
        "--text",
        str(text),
        "--out",
        str(tmp_path / "taken"),
        "--max-steps",
        "1",
    )
    assert result.returncode != 0 and "--overwrite" in result.stderr
    assert (tmp_path / "taken" / "config.json").read_text() == "{}"


def test_a_factorized_student_shards_and_trains_under_fsdp2_on_two_cpu_processes(tiny_pair, tmp_path):
    # PyTorch's FSDP2 itself runs on CPU processes over gloo (Accelerate would not turn it on there, see above).
    # Before make_shardable, fully_shard refused the factors: "FSDP does not support non-contiguous parameters".
    student, teacher, _ = tiny_pair
    out = tmp_path / "fsdp2"
    worker = ROOT / "tests" / "scripts" / "fsdp2_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    command += [str(worker)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*command, str(student), str(teacher), str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "fsdp2.json").read_text())
    assert report["sharded"] and report["tied"]
    assert report["losses"][-1] < report["losses"][0]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(factorized_layers(model)) == 2 and model.lm_head.weight is model.model.embed_tokens.weight
    before = AutoModelForCausalLM.from_pretrained(student)
    assert not torch.equal(model.model.embed_tokens.basis, before.model.embed_tokens.basis)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)
