"""Loading options, generation, training, resizing and the Hub path on a factorized model."""

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer, TrainingArguments

import hf_factor_embed as hfe
from hf_factor_embed import FactorizedEmbedding

RANK = 8


@pytest.fixture
def saved_llama(tmp_path):
    model = hfe.patch_model(tiny_llama(), rank=RANK)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_bf16_round_trip(tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(), rank=RANK).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    for kwargs in ({"dtype": torch.bfloat16}, {"dtype": "auto"}):
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)
        assert reloaded.get_input_embeddings().weight.dtype == torch.bfloat16
        assert reloaded.lm_head.basis is reloaded.model.embed_tokens.basis
        # Every parameter bit-identical; the logits differ only where transformers itself keeps rotary buffers
        # in float32 on load but not after .to(bfloat16).
        saved = dict(model.named_parameters())
        for name, param in reloaded.named_parameters():
            assert torch.equal(param, saved[name]), name
        with torch.no_grad():
            assert torch.allclose(reloaded(input_ids).logits.float(), model(input_ids).logits.float(), atol=2e-2)


def test_float32_checkpoint_loads_as_bf16(saved_llama, input_ids):
    _, path = saved_llama
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    assert reloaded.model.embed_tokens.basis.dtype == torch.bfloat16


def test_device_map_load(saved_llama, input_ids):
    model, path = saved_llama
    for device_map in ("cpu", "auto"):
        reloaded = AutoModelForCausalLM.from_pretrained(path, device_map=device_map)
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)


def test_sharded_round_trip(tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(tied=False), rank=RANK)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)
    # Saving unsharded into the same folder replaces the shards, leaving no stale file behind.
    reloaded.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("model-*.safetensors")) and not (tmp_path / "model.safetensors.index.json").exists()
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids).logits, reloaded(input_ids).logits)


def test_generate_after_reload(saved_llama):
    model, path = saved_llama
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    prompt = torch.tensor([[5, 6, 7]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    out = reloaded.generate(prompt, **kwargs)
    assert out.shape == (1, 9)
    assert torch.equal(out, model.generate(prompt, **kwargs))


def test_trainer_step_updates_the_factors(saved_llama, tmp_path):
    from datasets import Dataset

    _, path = saved_llama
    model = AutoModelForCausalLM.from_pretrained(path)
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (8, 16))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    before = model.model.embed_tokens.weight.detach().clone(), model.model.embed_tokens.basis.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    emb = model.model.embed_tokens
    assert not torch.equal(emb.weight, before[0]) and not torch.equal(emb.basis, before[1])
    assert model.lm_head.weight is emb.weight and model.lm_head.basis is emb.basis


@pytest.mark.parametrize("tied", [True, False])
def test_resize_token_embeddings_adds_rows_of_a_and_keeps_tying(tied, tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(tied=tied), rank=RANK)
    before = model(input_ids).logits.detach()
    model.resize_token_embeddings(VOCAB + 7)
    emb = model.get_input_embeddings()
    assert isinstance(emb, FactorizedEmbedding) and emb.weight.shape == (VOCAB + 7, RANK)
    assert model.lm_head.weight.shape == (VOCAB + 7, RANK)
    assert (model.lm_head.weight is emb.weight) == tied
    assert model.config.vocab_size == VOCAB + 7
    logits = model(input_ids).logits.detach()
    assert logits.shape[-1] == VOCAB + 7
    assert torch.allclose(logits[..., :VOCAB], before, atol=1e-5)  # old tokens unchanged
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)
    model.resize_token_embeddings(pad_to_multiple_of=64)
    assert model.get_input_embeddings().num_embeddings == 384


def test_resize_bert_keeps_decoder_bias_linked(input_ids):
    model = hfe.patch_model(tiny_bert(), rank=RANK)
    model.resize_token_embeddings(VOCAB + 3)
    assert model.cls.predictions.bias is model.cls.predictions.decoder.bias
    assert model.cls.predictions.bias.shape == (VOCAB + 3,)
    assert model(input_ids).logits.shape[-1] == VOCAB + 3


def test_push_to_hub_uploads_the_saved_files(monkeypatch, saved_llama):
    """push_to_hub goes through save_pretrained: the same files reach the Hub (the HTTP layer is faked)."""
    import transformers.utils.hub as hub

    model, path = saved_llama
    uploaded: dict[str, bytes] = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            for op in operations:
                with open(op.path_or_fileobj, "rb") as fh:
                    uploaded[op.path_in_repo] = fh.read()
            return "fake-commit"

    monkeypatch.setattr(hub, "_hf_api", FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: type("C", (), {"save": lambda s, p: None})())
    model.push_to_hub("me/tiny-factorized")
    assert uploaded["model.safetensors"] == (path / "model.safetensors").read_bytes()
    assert b'"hf_factor_embed"' in uploaded["config.json"]


def test_masked_lm_round_trip_through_pipeline_classes(tmp_path, input_ids):
    model = hfe.patch_model(tiny_bert(), rank=RANK)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.cls.predictions.bias is reloaded.cls.predictions.decoder.bias
    assert torch.equal(reloaded(input_ids).logits, model(input_ids).logits)


def test_resize_and_train_a_banded_model(tmp_path, input_ids):
    model = hfe.patch_model(tiny_llama(), rank=16, method="banded", calibration=torch.arange(VOCAB).repeat(3))
    emb = model.get_input_embeddings()
    assert emb.num_dense_rows > 0 and not emb.dense_index.requires_grad
    model.resize_token_embeddings(VOCAB - 50)  # drops band rows of the removed ids
    assert int(emb.dense_index.max()) < VOCAB - 50 and model.lm_head.dense_rows is emb.dense_rows
    model.train()
    loss = model(input_ids.clamp_max(VOCAB - 51), labels=input_ids.clamp_max(VOCAB - 51)).loss
    loss.backward()
    assert emb.dense_rows.grad is not None and emb.dense_index.grad is None
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.get_input_embeddings().num_dense_rows == emb.num_dense_rows
