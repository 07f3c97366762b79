"""Every option of every subcommand, given a bad value (zero, negative, out of range, wrong type, a missing or
unreadable path): one line on stderr naming the problem, exit status 2, no traceback, nothing written, and no model
loaded where the mistake can be seen without one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import tiny_bert, tiny_llama, tiny_tokenizer, tiny_words
from transformers import PreTrainedModel

import hf_factor_embed as hfe
from hf_factor_embed.cli import main
from hf_factor_embed.folders import INCOMPLETE


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    tiny_llama().save_pretrained(root / "dense")
    tiny_tokenizer().save_pretrained(root / "dense")
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(root / "factorized")
    hfe.patch_model(tiny_bert(), rank=8).save_pretrained(root / "encoder")
    (root / "text.txt").write_text(tiny_words(600))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("Grüße aus Köln, déjà vu.\n".encode("latin-1") * 20)
    (root / "taken").mkdir()
    (root / "taken" / "mine.txt").write_text("keep")
    (root / "a-file").write_text("not a folder")
    (root / "no-config").mkdir()
    (root / "one-line.txt").write_text("A single line of text.\n")
    tiny_llama(vocab=400).save_pretrained(root / "wide")  # another vocabulary
    (root / "interrupted").mkdir()  # what a killed run leaves where it wrote in place
    (root / "interrupted" / INCOMPLETE).write_text('{"command": "compress dense --out interrupted"}')
    (root / "interrupted" / "config.json").write_text("{}")
    shutil.copytree(root / "factorized", root / "factorized-interrupted")
    (root / "factorized-interrupted" / INCOMPLETE).write_text('{"command": "recover"}')
    return root


def _compress(*extra: str) -> list[str]:
    return ["compress", "{dense}", "--rank", "8", "--calibration", "{text}", "--out", "{out}", *extra]


def _without(argv: list[str], option: str, count: int = 2) -> list[str]:
    i = argv.index(option)
    return argv[:i] + argv[i + count :]


# (subcommand's argv with {placeholders}, a fragment of the one-line message)
CASES = {
    # compress: sizes
    "compress rank 0": (_compress("--rank", "0"), "rank=0 (--rank) must be a whole number above 0"),
    "compress rank negative": (_compress("--rank", "-5"), "rank=-5 (--rank) must be a whole number above 0"),
    "compress rank no smaller": (_compress("--rank", "54"), "1..53"),
    "compress rank huge": (_compress("--rank", "10000"), "1..53"),
    "compress rank not a number": (_compress("--rank", "x"), "Invalid value for '--rank'"),
    "compress rank fraction": (_compress("--rank", "2.5"), "Invalid value for '--rank'"),
    "compress budget 0": (_without(_compress("--budget", "0"), "--rank"), "budget=0.0 (--budget) must be a share"),
    "compress budget above 1": (
        _without(_compress("--budget", "1.5"), "--rank"),
        "budget=1.5 (--budget) must be a share",
    ),
    "compress budget negative": (_without(_compress("--budget", "-0.1"), "--rank"), "must be a share"),
    "compress target below 1": (_without(_compress("--target", "0.5"), "--rank"), "target=0.5 (--target)"),
    "compress generated bad size": (
        ["compress", "{dense}", "--calibration", "generated:lots", "--out", "{out}"],
        "e.g. generated:8192",
    ),
    "compress generated twice": (
        ["compress", "{dense}", "--calibration", "generated", "--calibration", "generated:512", "--out", "{out}"],
        "'generated' is named twice",
    ),
    "compress target-kld 0": (_without(_compress("--target-kld", "0"), "--rank"), "target_kld=0.0 (--target-kld)"),
    "compress target-kld nan": (_without(_compress("--target-kld", "nan"), "--rank"), "a number > 0"),
    "compress target-kld and rank": (_compress("--target-kld", "0.01"), "exactly one of"),
    "compress target-kld and target": (
        _without(_compress("--target-kld", "0.01", "--target", "1.01"), "--rank"),
        "without --max-bytes or --target",
    ),
    "compress target-kld no sources": (
        ["compress", "{dense}", "--target-kld", "0.01", "--out", "{out}"],
        "--target-kld is measured on served sources",
    ),
    "compress two sizes": (_compress("--budget", "0.3"), "exactly one of"),
    "compress no size": (_without(_without(_compress(), "--rank"), "--calibration"), "exactly one of"),
    # compress: the plan
    "compress max-bytes junk": (_without(_compress("--max-bytes", "lots"), "--rank"), "is neither a share"),
    "compress max-bytes 0": (_without(_compress("--max-bytes", "0"), "--rank"), "strictly between 0 and 1"),
    "compress max-bytes 1": (_without(_compress("--max-bytes", "1"), "--rank"), "strictly between 0 and 1"),
    "compress max-bytes too small": (_without(_compress("--max-bytes", "0.001"), "--rank"), "smallest plan needs"),
    "compress max-bytes too large": (_without(_compress("--max-bytes", "2GB"), "--rank"), "nothing to compress"),
    "compress max-bytes and rank": (_compress("--max-bytes", "0.08"), "exactly one of"),
    "compress max-bytes and target": (
        _without(_compress("--max-bytes", "0.08", "--target", "1.01"), "--rank"),
        "exactly one of",
    ),
    "compress max-bytes no sources": (
        ["compress", "{dense}", "--max-bytes", "0.08", "--out", "{out}"],
        "name them with --calibration",
    ),
    "compress max-bytes band share": (
        _without(_compress("--max-bytes", "0.08", "--band-share", "0.5"), "--rank"),
        "picks the band and the tail",
    ),
    # compress: storage
    "compress bits 3": (_compress("--bits", "3"), "bits=3 (--bits) is not supported"),
    "compress bits 0": (_compress("--bits", "0"), "bits=0 (--bits) is not supported"),
    "compress group without bits": (_compress("--group-size", "32"), "group_size=32 needs bits"),
    "compress group 0": (_compress("--bits", "4", "--group-size", "0"), "group_size=0"),
    "compress group negative": (_compress("--bits", "4", "--group-size", "-32"), "group_size=-32"),
    "compress band bits alone": (_compress("--band-bits", "8"), "band_bits (--band-bits) needs bits (--bits)"),
    "compress band bits 5": (
        _compress("--bits", "4", "--band-bits", "5"),
        "band_bits=5 (--band-bits) is not supported",
    ),
    "compress band share above 1": (_compress("--band-share", "1.5"), "band_share=1.5"),
    "compress band share negative": (_compress("--band-share", "-0.5"), "band_share=-0.5"),
    "compress band share other method": (_compress("--method", "svd", "--band-share", "0.5"), "not of 'svd'"),
    "compress method": (_compress("--method", "foo"), "unknown factorization method 'foo'"),
    "compress tail unknown": (_compress("--tail", "vq"), "tail='vq' (--tail) is not one of"),
    "compress tail sub-dim alone": (_compress("--tail-sub-dim", "8"), "a setting of the product-coded tail"),
    "compress tail sub-dim 0": (_compress("--tail", "pq", "--tail-sub-dim", "0"), "tail_sub_dim=0"),
    "compress tail sub-dim not dividing": (
        _compress("--tail", "pq", "--tail-sub-dim", "7"),
        "divide the embedding width 64",
    ),
    "compress tail with svd": (_compress("--method", "svd", "--tail", "pq"), "not of 'svd'"),
    "compress dtype": (_compress("--dtype", "float8"), "--dtype 'float8'"),
    # compress: text
    "compress calibration tokens 0": (
        _compress("--calibration-tokens", "0"),
        "calibration_tokens=0 (--calibration-tokens)",
    ),
    "compress calibration tokens negative": (
        _compress("--calibration-tokens", "-1"),
        "calibration_tokens=-1 (--calibration-tokens)",
    ),
    "compress eval tokens 0": (_compress("--eval-tokens", "0"), "eval_tokens=0 (--eval-tokens)"),
    "compress eval tokens negative": (_compress("--eval-tokens", "-5"), "eval_tokens=-5 (--eval-tokens)"),
    "compress held back 0": (_compress("--held-back", "0"), "held_back=0.0 (--held-back)"),
    "compress held back 1": (_compress("--held-back", "1"), "held_back=1.0 (--held-back)"),
    "compress missing calibration": (_compress("--calibration", "{root}/none.txt"), "text file not found"),
    "compress binary calibration": (_compress("--calibration", "{root}/binary.txt"), "is a binary file"),
    "compress latin-1 calibration": (_compress("--calibration", "{root}/latin1.txt"), "is not UTF-8 text"),
    "compress unknown language": (_compress("--calibration", "lang:xx_NOPE"), "no gettext catalogs"),
    "compress missing eval text": (_compress("--eval-text", "{root}/none.txt"), "text file not found"),
    "compress measure without serving": (
        _without(_compress("--measure", "pydoc"), "--calibration"),
        "--measure goes with --calibration",
    ),
    "compress calibration and dataset": (_compress("--dataset", "wikitext"), "not both"),
    # compress: where from, where to
    "compress missing model": (["compress", "{root}/missing-dir", "--rank", "8", "--out", "{out}"], "does not exist"),
    "compress unknown bundled": (["compress", "bundled:nope", "--rank", "8", "--out", "{out}"], "bundled:gemma3"),
    "compress offline hub name": (["compress", "nobody/no-such-model", "--rank", "8", "--out", "{out}"], "offline"),
    "compress folder without config": (["compress", "{root}/no-config", "--rank", "8", "--out", "{out}"], "config"),
    "compress out unwritable": (_without(_compress(), "--out") + ["--out", "/proc/foo"], "cannot be written"),
    "compress out a file": (_without(_compress(), "--out") + ["--out", "{root}/a-file"], "is a file"),
    "compress out taken": (_without(_compress(), "--out") + ["--out", "{root}/taken"], "--overwrite"),
    "compress factorized model": (
        ["compress", "{root}/factorized", "--rank", "8", "--out", "{out}"],
        "already factorized",
    ),
    # eval
    "eval no text": (["eval", "{dense}"], "one of them"),
    "eval max tokens 0": (["eval", "{dense}", "--text", "{text}", "--max-tokens", "0"], "max_tokens=0 (--max-tokens)"),
    "eval max tokens negative": (["eval", "{dense}", "--text", "{text}", "--max-tokens", "-5"], "max_tokens=-5"),
    "eval missing model": (["eval", "{root}/missing-dir", "--text", "{text}"], "does not exist"),
    "eval missing compare": (
        ["eval", "{dense}", "--text", "{text}", "--compare", "{root}/missing-dir"],
        "--compare model folder",
    ),
    "eval missing text": (["eval", "{dense}", "--text", "{root}/none.txt"], "text file not found"),
    "eval binary text": (["eval", "{dense}", "--text", "{root}/binary.txt"], "is a binary file"),
    # analyze
    "analyze budget 0": (["analyze", "{dense}", "--budget", "0", "--out", "{out}"], "budget=0.0 (--budget)"),
    "analyze budget 2": (["analyze", "{dense}", "--budget", "2", "--out", "{out}"], "budget=2.0 (--budget)"),
    "analyze missing model": (["analyze", "{root}/missing-dir", "--out", "{out}"], "does not exist"),
    "analyze missing text": (
        ["analyze", "{dense}", "--calibration", "{root}/none.txt", "--out", "{out}"],
        "text file not found",
    ),
    "analyze out unwritable": (["analyze", "{dense}", "--out", "/proc/foo"], "cannot be written"),
    # densify
    "densify missing folder": (["densify", "{root}/missing-dir", "--out", "{out}"], "does not exist"),
    "densify dense folder": (["densify", "{dense}", "--out", "{out}"], "nothing to densify"),
    "densify out unwritable": (["densify", "{root}/factorized", "--out", "/proc/foo"], "cannot be written"),
    "densify out taken": (["densify", "{root}/factorized", "--out", "{root}/taken"], "--overwrite"),
    # export
    "export missing folder": (["export", "{root}/missing-dir", "--out", "{out}"], "does not exist"),
    "export dense folder": (["export", "{dense}", "--out", "{out}"], "run hf-factor-embed compress first"),
    "export no config": (["export", "{root}/no-config", "--out", "{out}"], "no config.json"),
    "export unknown format": (["export", "{root}/factorized", "--out", "{out}", "--format", "tflite"], "onnx"),
    "export out unwritable": (["export", "{root}/factorized", "--out", "/proc/foo"], "cannot be written"),
    "export out taken": (["export", "{root}/factorized", "--out", "{root}/taken"], "--overwrite"),
    "export out is a file": (["export", "{root}/factorized", "--out", "{root}/a-file"], "is a file"),
    "export unknown body": (["export", "{root}/factorized", "--out", "{out}", "--body", "int3"], "fp32, int8"),
    "export encoder body": (["export", "{root}/encoder", "--out", "{out}", "--body", "int4"], "--body fp32"),
    "export unknown head": (["export", "{root}/factorized", "--out", "{out}", "--head", "fast"], "shortlist:<tokens>"),
    "export empty shortlist": (
        ["export", "{root}/factorized", "--out", "{out}", "--head", "shortlist:0"],
        "whole number",
    ),
    "export shortlist low-rank tail": (
        ["export", "{root}/factorized", "--out", "{out}", "--head", "shortlist"],
        "--head full",
    ),
    "export shortlist encoder": (["export", "{root}/encoder", "--out", "{out}", "--head", "shortlist"], "--head full"),
    "export encoder to executorch": (
        ["export", "{root}/encoder", "--out", "{out}", "--format", "executorch"],
        "exports decoders",
    ),
    # push
    "push missing folder": (["push", "{root}/missing-dir", "me/x"], "does not exist"),
    "push dense folder": (["push", "{dense}", "me/x"], "not a factorized checkpoint"),
    # recover
    **{
        f"recover {name}": (
            ["recover", "{root}/factorized", "--teacher", "{dense}", "--text", "{text}", "--out", "{out}", *extra],
            message,
        )
        for name, extra, message in [
            ("mode", ["--mode", "foo"], "--mode 'foo' is not one of"),
            ("train", ["--mode", "distill", "--train", "everything"], "--train 'everything' is not one of"),
            ("cheap train lora", ["--mode", "cheap", "--train", "lora"], "--train 'lora' is not one of"),
            ("codebooks without codes", ["--mode", "cheap", "--train", "codebooks"], "no product-coded tail"),
            ("max minutes 0", ["--max-minutes", "0"], "--max-minutes 0.0 must be a number above 0"),
            ("max minutes negative", ["--max-minutes", "-1"], "--max-minutes -1.0"),
            ("max tokens 0", ["--max-tokens", "0"], "--max-tokens 0 must be a whole number above 0"),
            ("max tokens too few", ["--max-tokens", "100"], "fewer than two 256-token blocks"),
            ("max steps 0", ["--max-steps", "0"], "--max-steps 0"),
            ("lr 0", ["--lr", "0"], "--lr 0.0"),
            ("self-generate 0", ["--self-generate", "0"], "--self-generate 0"),
            ("missing text", ["--text", "{root}/none.txt"], "text file not found"),
            ("text and dataset", ["--dataset", "wikitext"], "not both"),
        ]
    },
    "recover missing student": (
        ["recover", "{root}/missing-dir", "--teacher", "{dense}", "--text", "{text}", "--out", "{out}"],
        "does not exist",
    ),
    "recover missing teacher": (
        ["recover", "{root}/factorized", "--teacher", "{root}/missing-dir", "--text", "{text}", "--out", "{out}"],
        "teacher folder",
    ),
    "recover no text": (
        ["recover", "{root}/factorized", "--teacher", "{dense}", "--out", "{out}"],
        "--self-generate N",
    ),
    "recover out unwritable": (
        ["recover", "{root}/factorized", "--teacher", "{dense}", "--text", "{text}", "--out", "/proc/foo"],
        "cannot be written",
    ),
}
# Issue 33: what was accepted and gave a wrong result, refused late, or named the problem wrongly.
CASES |= {
    "compress out empty": (_compress()[:-1] + [""], "--out is empty"),
    "compress out is the model": (_compress("--overwrite")[:-2] + ["{dense}", "--overwrite"], "write over the input"),
    "compress out interrupted": (_compress()[:-1] + ["{root}/interrupted"], "left by an interrupted run"),
    "compress max-bytes 1.5": (_without(_compress("--max-bytes", "1.5"), "--rank"), "a share is below 1"),
    "compress target nan": (_without(_compress("--target", "nan"), "--rank"), "target=nan (--target)"),
    "compress target inf": (_without(_compress("--target", "inf"), "--rank"), "target=inf (--target)"),
    "compress band share 1": (_compress("--band-share", "1.0"), "band_share=1.0 (--band-share)"),
    "compress max-bytes band share 0": (
        _without(_compress("--max-bytes", "0.08", "--band-share", "0"), "--rank"),
        "--band-share",
    ),
    "compress eval tokens 10": (_compress("--eval-tokens", "10"), "at least 16 tokens"),
    "compress calibration folder": (_compress("--calibration", "{root}/taken"), "is a folder, not a text file"),
    "compress calibration device": (_compress("--calibration", "/dev/null"), "not a regular file"),
    "compress one-line calibration": (
        ["compress", "{dense}", "--rank", "8", "--calibration", "{root}/one-line.txt", "--out", "{out}"],
        "went to the held-back part",
    ),
    "compress one-line eval text": (_compress("--eval-text", "{root}/one-line.txt"), "too short to measure"),
    "compress language empty": (_compress("--calibration", "lang:"), "a language is a gettext code"),
    "compress language path": (_compress("--calibration", "lang:../../../etc"), "a language is a gettext code"),
    "compress dataset with max-bytes": (
        ["compress", "{dense}", "--dataset", "wikitext", "--max-bytes", "0.08", "--out", "{out}"],
        "instead of --dataset",
    ),
    "compress gguf file missing": (_compress("--gguf-file", "model.gguf"), "--gguf-file model.gguf is not in"),
    "eval max tokens 10": (["eval", "{dense}", "--text", "{text}", "--max-tokens", "10"], "at least 16 tokens"),
    "eval compare other vocabulary": (
        ["eval", "{root}/factorized", "--text", "{text}", "--compare", "{root}/wide"],
        "different token ids",
    ),
    "analyze factorized": (["analyze", "{root}/factorized", "--out", "{out}"], "is factorized"),
    "push bad repo id": (["push", "{root}/factorized", "not a/valid id"], "not a Hub repository name"),
    "push interrupted": (["push", "{root}/factorized-interrupted", "me/x"], "interrupted run"),
    "export no tokenizer": (["export", "{root}/factorized", "--out", "{out}"], "has no tokenizer files"),
    "export interrupted": (["export", "{root}/factorized-interrupted", "--out", "{out}"], "interrupted run"),
    "recover out is the student": (
        ["recover", "{root}/factorized", "--teacher", "{dense}", "--text", "{text}", "--out", "{root}/factorized"]
        + ["--overwrite"],
        "write over the input",
    ),
}
#: Cases that can only be seen in the loaded model (a folder whose config says nothing of its weights).
NEEDS_THE_MODEL = {"compress factorized model"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_one_line_exit_2_before_any_model_loads(case, folders, tmp_path, capsys, monkeypatch):
    argv, message = CASES[case]
    out = tmp_path / "out"
    values = {"dense": folders / "dense", "text": folders / "text.txt", "root": folders, "out": out}
    argv = [a.format(**values) for a in argv]
    if case not in NEEDS_THE_MODEL:
        monkeypatch.setattr(PreTrainedModel, "from_pretrained", _no_model_loads)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    before = sorted(p.relative_to(folders) for p in folders.rglob("*"))

    code = main(argv)

    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hf-factor-embed: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, (case, err)
    assert message in errors[0], (case, errors[0])
    assert not out.exists() and not Path("/proc/foo").exists()
    assert sorted(p.relative_to(folders) for p in folders.rglob("*")) == before
    assert (folders / "taken" / "mine.txt").read_text() == "keep"


@classmethod
def _no_model_loads(cls, *args, **kwargs):
    raise AssertionError(f"{cls.__name__}.from_pretrained ran before the bad value was refused")
