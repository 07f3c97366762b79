"""Nothing lost, nothing loaded wrong (issue 33): every command writes its folder whole or not at all, a second run
into the same folder refuses, a killed run leaves no result that could be mistaken for one, and a checkpoint that
lost part of itself fails loudly on load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_tokenizer, tiny_words
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed import CheckpointError, FactorEmbedError
from hf_factor_embed.cli import main
from hf_factor_embed.folders import INCOMPLETE, output_lock, staged_folder


@pytest.fixture
def dense(tmp_path) -> Path:
    folder = tmp_path / "dense"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "text.txt").write_text(tiny_words(800))
    return folder


def _compress(dense: Path, out: Path, *extra: str) -> list[str]:
    text = dense.parent / "text.txt"
    return ["compress", str(dense), "--rank", "8", "--calibration", str(text), "--out", str(out), *extra]


def test_a_failed_write_leaves_the_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed half way")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert not list(tmp_path.glob(".out.staging-*"))
    with staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]  # replaced whole, only once complete


def test_a_second_run_into_the_same_folder_refuses_in_one_line(dense, tmp_path, capsys):
    out = tmp_path / "out"
    with output_lock(out):  # another run holds --out (a second open file: flock refuses it like another process)
        code = main(_compress(dense, out))
    err = capsys.readouterr().err
    assert code == 2 and "being written by another run" in err and not out.exists()
    assert main(_compress(dense, out)) == 0
    code = main(_compress(dense, out, "--rank", "16"))  # finished first: the second refuses, nothing replaced
    assert code == 2 and "exists and is not empty" in capsys.readouterr().err


def _run_killed(script: str, cwd: Path) -> int:
    """Run ``script`` in a fresh interpreter that kills itself (SIGKILL) where the script says."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, timeout=600)
    return done.returncode


def test_compress_killed_at_its_save_step_leaves_the_old_folder_whole(dense, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_compress(dense, out, "--rank", "16")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = _run_killed(
        f"""
        import os, signal
        import hf_factor_embed.pipeline.save as save
        from hf_factor_embed.cli import main
        write_card = save.save_folder
        def killed(model, tokenizer, folder, result, spectrum):
            model.save_pretrained(folder)  # the weights are written, then the process dies
            os.kill(os.getpid(), signal.SIGKILL)
        save.save_folder = killed
        import hf_factor_embed.pipeline.compress as compress
        compress.save_folder = killed
        main({_compress(dense, out, "--rank", "24", "--overwrite")!r})
        """,
        tmp_path,
    )
    assert code == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the finished folder, untouched
    assert list(tmp_path.glob(".out.staging-*"))  # what the killed run left, hidden beside it
    assert main(_compress(dense, out, "--rank", "24", "--overwrite")) == 0
    assert not list(tmp_path.glob(".out.staging-*"))  # cleaned by the next run
    assert json.loads((out / "compression.json").read_text())["requested"] == {"rank": 24}


def test_export_killed_while_writing_leaves_no_file_under_its_name(dense, tmp_path):
    checkpoint = tmp_path / "ckpt"
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(checkpoint)
    tiny_tokenizer().save_pretrained(checkpoint)
    out = tmp_path / "onnx"
    code = _run_killed(
        f"""
        import os, signal
        import hf_factor_embed.export.api as api
        def killed(model, out, format, kind):
            (out / "model.onnx").write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        api._write = killed
        api.export({str(checkpoint)!r}, {str(out)!r})
        """,
        tmp_path,
    )
    assert code == -signal.SIGKILL and not out.exists()


def test_compress_never_writes_over_the_model_it_reads(dense, capsys):
    before = {p.name: p.read_bytes() for p in dense.iterdir()}
    code = main(_compress(dense, dense, "--overwrite"))
    assert code == 2 and "would write over the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in dense.iterdir()} == before


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    hfe.patch_model(tiny_llama(), rank=8, calibration=torch.arange(100, 140).repeat(20)).save_pretrained(folder)
    return folder


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))


def test_a_config_without_its_modules_is_refused_not_loaded_random(checkpoint):
    _edit_config(checkpoint, lambda q: q.pop("modules"))
    with pytest.raises(CheckpointError, match="names no factorized modules"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_a_float_checkpoint_with_a_nan_factor_is_refused(checkpoint):
    _edit_tensor(checkpoint, "embed_tokens.weight", lambda t: t[VOCAB - 1, :1].fill_(float("nan")))  # outside the band
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def _edit_tensor(folder: Path, suffix: str, edit) -> None:
    """Apply ``edit`` to the one tensor of ``folder``'s checkpoint whose key ends with ``suffix``, in the file."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    (key,) = [k for k in tensors if k.endswith(suffix)]
    edit(tensors[key])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _integer_pq_checkpoint(folder: Path) -> int:
    """A product-coded checkpoint with 4-bit factors at ``folder``; its vocabulary size."""
    from test_product_tail import pq_model

    model = pq_model()
    hfe.densify(model)
    method = hfe.factorize.banded.BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_exact_columns=4)
    hfe.patch_model(model, rank=8, method=method, calibration=torch.arange(100, 140).repeat(20), bits=4)
    model.save_pretrained(folder)
    return model.get_input_embeddings().num_embeddings


def test_a_float_checkpoint_with_a_nan_band_row_is_refused(checkpoint):
    """The band's rows are held column-major; the check reads them in memory order and still finds one NaN."""
    _edit_tensor(checkpoint, "embed_tokens.dense_rows", lambda t: t[-1].fill_(float("inf")))
    with pytest.raises(CheckpointError, match="dense_rows holds NaN or infinite"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_an_integer_checkpoint_with_a_nan_codebook_is_refused(tmp_path):
    """Tensors read from integers skip the finite check (their scales are checked); float ones still get it."""
    _integer_pq_checkpoint(tmp_path)
    _edit_tensor(tmp_path, "codebooks", lambda t: t[0, 0].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="codebooks holds NaN or infinite"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_an_integer_product_coded_checkpoint_with_a_band_id_out_of_range_is_refused(tmp_path):
    """The band's ids are checked before the integers are read back through them (once a bare IndexError)."""
    vocab = _integer_pq_checkpoint(tmp_path)
    _edit_tensor(tmp_path, "dense_index", lambda t: t[-1:].fill_(vocab))
    with pytest.raises(CheckpointError, match=f"holds {vocab}, outside the vocabulary"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_a_folder_left_by_an_interrupted_run_is_refused_on_load(checkpoint):
    (checkpoint / INCOMPLETE).write_text(json.dumps({"command": "recover ckpt"}))
    with pytest.raises(CheckpointError, match=r"interrupted run \(recover ckpt\)"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ({"a": 123}, "got int"),
        ([1, 2, 3], "got list"),
        (torch.rand(100) * 300, "must be an integer tensor"),
    ],
)
def test_calibration_of_the_wrong_kind_is_one_clear_error(calibration, message):
    with pytest.raises(FactorEmbedError, match=message):
        hfe.patch_model(tiny_llama(), rank=8, calibration=calibration, tokenizer=tiny_tokenizer())


def test_model_tokens_zero_is_refused_before_calibrating():
    with pytest.raises(FactorEmbedError, match=r"model_tokens=0 \(--model-tokens\)"):
        hfe.patch_model(
            tiny_llama(), rank=8, calibration={"t": tiny_words(300)}, tokenizer=tiny_tokenizer(), model_tokens=0
        )


def test_a_foreign_tokenizer_of_the_same_size_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "dense"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    permuted = {"[UNK]": 0, **{f"w{i}": VOCAB - 1 - i for i in range(1, VOCAB - 1)}, "</s>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(permuted, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    foreign = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    with pytest.raises(FactorEmbedError, match="not the one saved with the model"):
        hfe.patch_model(model, rank=8, calibration={"t": tiny_words(300)}, tokenizer=foreign)


def test_a_band_share_near_one_keeps_the_band_and_the_special_tokens():
    from hf_factor_embed.factorize.banded import BandedMethod

    model = hfe.patch_model(
        tiny_llama(), rank=8, method=BandedMethod(0.99), calibration=torch.arange(100, 140).repeat(20)
    )
    layer = model.get_input_embeddings()
    assert layer.num_dense_rows > 0 and 0 in layer.dense_index.tolist()  # pad, the special token, is exact
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize("edit", ["deleted", "unknown quant_method"])
def test_factors_that_no_quantizer_claims_fail_loudly(tmp_path, edit):
    """A factorized checkpoint whose config.json lost its plugin section would load as dense with random embeddings;
    with hf_factor_embed installed its factor tensors are recognised and the load refused."""
    folder = tmp_path / "q4"
    hfe.patch_model(tiny_llama(), rank=8, calibration=torch.arange(100, 140).repeat(20), bits=4).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if edit == "deleted":
        del config["quantization_config"]
    else:
        config["quantization_config"]["quant_method"] = "mystery"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="holds hf_factor_embed factors"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_save_pretrained_removes_what_a_killed_save_left(tmp_path):
    model = hfe.patch_model(tiny_llama(), rank=8)
    stale = tmp_path / ".ckpt.saving-999999999-abc"  # no such process
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    model.save_pretrained(tmp_path / "ckpt")
    assert not stale.exists() and (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_a_product_coded_tail_without_a_sub_dimension_records_the_one_used(dense, tmp_path):
    out = tmp_path / "pq"
    assert main(_compress(dense, out, "--tail", "pq")) == 0
    info = json.loads((out / "compression.json").read_text())
    assert info["tail"] == "pq" and info["tail_sub_dim"] == 8
    assert "one byte per None" not in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-bytes", "40MB", "--rank", "160"], "two sizes"),
        (["--languages", ""], "a language is a gettext code"),
        (["--languages", "../../../etc"], "a language is a gettext code"),
    ],
)
def test_the_main_job_refuses_bad_arguments_before_loading(argv, message, tmp_path, monkeypatch):
    import importlib.util

    from transformers import PreTrainedModel

    def no_load(*args, **kwargs):
        raise AssertionError("a model loaded before the bad argument was refused")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", no_load)
    path = Path(__file__).resolve().parents[1] / "recipes" / "compress_gemma3.py"
    spec = importlib.util.spec_from_file_location("compress_gemma3", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    with pytest.raises(FactorEmbedError, match=message):
        recipe.main([*argv, "--out", str(tmp_path / "out")])


def test_a_refusal_is_the_only_line_on_stderr_in_a_fresh_process(dense, tmp_path):
    """Nothing an optional dependency prints at import time (torchao's extensions, torch's pytree notices) stands
    before a refusal: the one line is all a user reads."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_factor_embed.cli",
            "compress",
            str(dense),
            "--rank",
            "0",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["hf-factor-embed: error: rank=0 (--rank) must be a whole number above 0"]
