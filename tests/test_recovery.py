"""Recovery: losses, what trains, the cheap refit, distillation on Accelerate (save, reload, resume, teacher
cache, LoRA), the Trainer subclass, and PEFT merges that keep a model factorized and tied."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import VOCAB, tiny_llama
from datasets import Dataset
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed.quantizer.structure import factorized_layers
from hf_factor_embed.recovery import (
    CachedTeacherBlocks,
    CheapRefitConfig,
    DistillConfig,
    cache_teacher_topk,
    cheap_refit,
    collect_teacher_signals,
    distill,
    factor_parameters,
    kl_to_teacher,
    kl_to_teacher_topk,
    pack_blocks,
    prepare_student,
    split_blocks,
)
from hf_factor_embed.recovery.data import load_text


def random_blocks(n: int = 12, length: int = 16, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")


def teacher_and_student(tied: bool = True, rank: int = 8):
    teacher = tiny_llama(tied)
    student = hfe.patch_model(copy.deepcopy(teacher), rank=rank, method="svd")
    return teacher, student


def assert_factorized_and_tied(model) -> None:
    layers = factorized_layers(model)
    assert len(layers) == 2
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight and head.basis is embedding.basis


# --- losses -------------------------------------------------------------------------------------------------


def test_kl_is_zero_for_the_teacher_itself_and_topk_of_all_tokens_is_the_full_kl():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, VOCAB), torch.randn(2, 5, VOCAB)
    assert float(kl_to_teacher(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-5)
    top = teacher.topk(VOCAB, dim=-1)
    full = kl_to_teacher(student, teacher, 2.0)
    assert float(kl_to_teacher_topk(student, top.values, top.indices, 2.0)) == pytest.approx(float(full), rel=1e-4)
    assert float(full) > 0


# --- what trains --------------------------------------------------------------------------------------------


def test_factors_mode_trains_the_shared_factors_only():
    _, student = teacher_and_student()
    model = prepare_student(student, "factors")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in factor_parameters(student)}
    assert len(factor_parameters(student)) == 2  # A and B, shared by the tied pair


def test_lora_mode_adds_adapters_beside_the_factors_and_all_mode_trains_everything():
    _, student = teacher_and_student()
    lora = prepare_student(copy.deepcopy(student), "lora", lora_rank=4)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any(n.endswith("embed_tokens.basis") for n in names)
    assert not any("q_proj.base_layer.weight" in n for n in names)
    everything = prepare_student(student, "all")
    assert all(p.requires_grad for p in everything.parameters())


def test_a_dense_model_is_refused_with_a_clear_error():
    with pytest.raises(hfe.FactorEmbedError, match="patch it first"):
        prepare_student(tiny_llama(), "factors")
    with pytest.raises(hfe.FactorEmbedError, match="not one of"):
        prepare_student(teacher_and_student()[1], "adapters")


# --- cheap refit --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_cheap_refit_lowers_both_losses_and_keeps_tying(tied):
    teacher, student = teacher_and_student(tied, rank=4)
    ids = random_blocks(4, 32)[:]["input_ids"].reshape(-1)
    signals = collect_teacher_signals(teacher, ids, window=32, progress=False)
    assert signals.hidden.shape == (ids.numel(), 64)
    result = cheap_refit(student, signals, CheapRefitConfig(steps=60, batch_positions=64, lr=1e-2))
    assert result["after"]["head_kl"] < result["before"]["head_kl"]
    assert result["after"]["input_rel_err"] < result["before"]["input_rel_err"]
    if tied:
        assert_factorized_and_tied(student)
    assert not any(p.requires_grad for p in factor_parameters(student)) or student.training is False


def test_teacher_signals_put_bos_first_in_every_window_where_asked():
    teacher, _ = teacher_and_student()
    ids = torch.arange(3, 3 + 64)
    plain = collect_teacher_signals(teacher, ids, window=32, progress=False)
    framed = collect_teacher_signals(teacher, ids, window=32, progress=False, bos_id=1)
    assert torch.equal(plain.token_ids, ids[:64])
    assert framed.token_ids.tolist() == [1, *range(3, 34), 1, *range(34, 65)]  # <bos> and 31 tokens a window
    with torch.no_grad():  # the head inputs are those of the windows as fed
        hidden = teacher.model(input_ids=framed.token_ids.view(2, 32)).last_hidden_state.reshape(-1, 64)
    torch.testing.assert_close(framed.hidden, hidden)


def test_cheap_refit_refuses_a_factorized_teacher():
    _, student = teacher_and_student()
    with pytest.raises(hfe.FactorEmbedError, match="dense model"):
        collect_teacher_signals(student, torch.arange(1, 40), window=16, progress=False)


# --- distillation on Accelerate -----------------------------------------------------------------------------


def run_distill(tmp_path, student, teacher, **overrides):
    blocks = random_blocks()
    train, held_back = split_blocks(blocks, 2)
    settings = {"max_steps": 4, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "eval_every": 2, **overrides}
    config = DistillConfig(output_dir=str(tmp_path), **settings)
    return distill(student, train, held_back, config, teacher=teacher)


def test_distill_trains_saves_and_reloads_factorized_tied_and_identical(tmp_path, input_ids):
    teacher, student = teacher_and_student()
    before = [p.detach().clone() for p in factor_parameters(student)]
    summary = run_distill(tmp_path, student, teacher, lm_weight=0.5, hidden_weight=0.1)
    assert summary["steps"] == 4 and summary["stopped_by"] == "max_steps"
    assert summary["tokens"] == 4 * 2 * 16
    assert any(not torch.equal(b, p) for b, p in zip(before, factor_parameters(student), strict=True))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_factorized_and_tied(reloaded)
    torch.testing.assert_close(reloaded(input_ids).logits, student.eval()(input_ids).logits)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any("eval_perplexity" in row for row in log) and any("kd" in row for row in log)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_distill_resumes_from_its_last_checkpoint(tmp_path):
    teacher, student = teacher_and_student()
    run_distill(tmp_path, student, teacher)
    _, fresh = teacher_and_student()
    summary = run_distill(tmp_path, fresh, teacher, resume=True, max_steps=6)
    assert summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert 5 in steps and steps.count(1) == 1  # the second run went on from step 4
    with pytest.raises(hfe.FactorEmbedError, match="no checkpoint"):
        run_distill(tmp_path / "elsewhere", teacher_and_student()[1], teacher, resume=True)


def test_distill_from_a_teacher_topk_cache_needs_no_teacher(tmp_path):
    teacher, student = teacher_and_student()
    train, held_back = split_blocks(random_blocks(), 2)
    cache_teacher_topk(teacher, train, tmp_path / "cache", k=VOCAB, batch_size=3, shard_blocks=4, progress=False)
    cached = CachedTeacherBlocks(train, tmp_path / "cache")
    item = cached[3]
    ids = item["input_ids"].unsqueeze(0)
    with torch.no_grad():
        full = kl_to_teacher(student(ids).logits, teacher(ids).logits)
        from_cache = kl_to_teacher_topk(student(ids).logits, item["topk_values"][None], item["topk_ids"][None])
    assert float(from_cache) == pytest.approx(float(full), rel=1e-2)  # fp16 logits in the cache
    config = DistillConfig(output_dir=str(tmp_path / "out"), max_steps=2, batch_size=2, checkpoint_every=10)
    assert distill(student, cached, held_back, config, teacher=None)["steps"] == 2
    with pytest.raises(hfe.FactorEmbedError, match="covers 10 blocks"):
        CachedTeacherBlocks(random_blocks(5), tmp_path / "cache")


def test_distill_with_lora_saves_a_merged_factorized_tied_model(tmp_path, input_ids):
    teacher, student = teacher_and_student()
    summary = run_distill(tmp_path, student, teacher, train="lora", lora_rank=4)
    assert summary["steps"] == 4
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_factorized_and_tied(reloaded)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert reloaded(input_ids).logits.isfinite().all()


def test_distill_all_trains_the_blocks_at_a_tenth_of_the_factors_rate(tmp_path):
    from hf_factor_embed.recovery.distill import _param_groups

    teacher, _ = teacher_and_student()
    # banded: the band's integer index is a Parameter too, and must stay out of training
    student = hfe.patch_model(copy.deepcopy(teacher), rank=8, calibration=torch.randint(0, 300, (512,)))
    assert student.model.embed_tokens.dense_index is not None
    block = student.model.layers[0].mlp.up_proj.weight
    before = block.detach().clone()
    summary = run_distill(tmp_path, student, teacher, train="all", lr=1e-2)
    assert summary["steps"] == 4 and not torch.equal(before, block)
    config = DistillConfig(output_dir=str(tmp_path), train="all", lr=1e-2)
    trainable = [p for p in student.parameters() if p.requires_grad]
    factors, rest = _param_groups(student, trainable, config)
    assert rest["lr"] == pytest.approx(1e-3) and "lr" not in factors
    assert {id(p) for p in factors["params"]} == {id(p) for p in factor_parameters(student)}
    assert len(factors["params"]) + len(rest["params"]) == len(trainable)


# --- PEFT, the way users combine it ---------------------------------------------------------------------------


def test_lora_merge_save_reload_stays_factorized_tied_and_identical(tmp_path, input_ids):
    from peft import LoraConfig, get_peft_model

    _, student = teacher_and_student()
    peft_model = get_peft_model(student, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    merged = peft_model.merge_and_unload()
    assert_factorized_and_tied(merged)
    expected = merged(input_ids).logits
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_factorized_and_tied(reloaded)
    torch.testing.assert_close(reloaded(input_ids).logits, expected)


# --- Trainer ------------------------------------------------------------------------------------------------


def test_distillation_trainer_trains_the_factors(tmp_path):
    from transformers import TrainingArguments

    from hf_factor_embed.recovery.trainer import DistillationTrainer

    teacher, student = teacher_and_student()
    prepare_student(student, "factors")
    before = student.model.embed_tokens.basis.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=random_blocks(), teacher=teacher, lm_weight=0.5
    )
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, student.model.embed_tokens.basis)
    assert_factorized_and_tied(student)


# --- data ---------------------------------------------------------------------------------------------------


class WordTokenizer:
    """A stand-in tokenizer: one id per character, enough to test packing."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % 200 for c in text]}


def test_text_files_pack_into_fixed_blocks_and_evaluation_is_held_back(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 50)
    (tmp_path / "b.txt").write_text("y" * 29)
    blocks = pack_blocks(load_text([tmp_path / "a.txt", tmp_path / "b.txt"]), WordTokenizer(), block_size=16)
    assert len(blocks) == (51 + 30) // 16 and blocks[0]["input_ids"].shape == (16,)
    train, held_back = split_blocks(blocks, 1)
    assert len(train) == 4 and torch.equal(held_back[0]["input_ids"], blocks[4]["input_ids"])
    with pytest.raises(hfe.FactorEmbedError, match="not found"):
        load_text([tmp_path / "missing.txt"])
    with pytest.raises(hfe.FactorEmbedError, match="fewer than"):
        pack_blocks(load_text([tmp_path / "b.txt"]), WordTokenizer(), block_size=64)
    with pytest.raises(hfe.FactorEmbedError, match="hold back"):
        split_blocks(blocks, 5)
