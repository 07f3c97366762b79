"""The command line end to end on a tiny LLaMA: compress -> eval -> analyze -> densify -> push (to a recording
stand-in for the Hub), the model card, the plots, and one-line errors for a user's mistakes."""

from __future__ import annotations

import copy
import json
import struct
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_words
from transformers import AutoModelForCausalLM

import hf_factor_embed as hfe
from hf_factor_embed.cli import main
from hf_factor_embed.quantizer.structure import factorized_layers


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    tiny_llama().save_pretrained(root / "dense")
    tiny_tokenizer().save_pretrained(root / "dense")
    (root / "calibration.txt").write_text(tiny_words(3000, seed=1))
    (root / "held_back.txt").write_text(tiny_words(1200, seed=2))
    return root


@pytest.fixture(scope="module")
def compressed(dense_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compressed") / "model"
    argv = ["compress", dense_dir / "dense", "--rank", "16", "--calibration", dense_dir / "calibration.txt"]
    argv += ["--eval-text", dense_dir / "held_back.txt", "--out", out, "--base-model-id", "org/tiny-llama"]
    assert main([str(a) for a in argv]) == 0
    return out, json.loads((out / "compression.json").read_text())


def test_compress_writes_a_reloadable_checkpoint_card_and_summary(compressed):
    out, info = compressed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(factorized_layers(model)) == 2 and model.lm_head.weight is model.model.embed_tokens.weight
    assert info["report"]["method"] == "banded" and info["calibration_tokens"] > 0
    assert info["param_bytes_factorized"] < info["param_bytes_dense"]
    assert (
        info["evaluation"]["held_back"]["metric"] == "perplexity" and info["evaluation"]["held_back"]["factorized"] > 0
    )
    assert info["reload"] == {"identical": True, "tied": True, "factorized_layers": 2}
    assert info["command"].startswith("hf-factor-embed compress ")


def test_the_card_parses_and_its_metadata_is_what_the_hub_accepts(compressed):
    from huggingface_hub import ModelCard

    out, info = compressed
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "org/tiny-llama" and data["base_model_relation"] == "quantized"
    assert data["library_name"] == "transformers" and "hf-factor-embed" in data["tags"]
    assert "| input" in card.text and "AutoModelForCausalLM.from_pretrained" in card.text
    assert "| held_back | **no** | perplexity |" in card.text and "| calibration | yes (held back) |" in card.text
    assert info["command"] in card.text and "![spectrum.png](spectrum.png)" in card.text
    card.validate = None  # network validation is the Hub's; the YAML round trip is checked here
    assert ModelCard(str(card)).data.to_dict() == data


def test_the_cards_loading_snippet_runs_as_written_without_an_import(compressed, tmp_path):
    # What a reader copies: plain transformers code, in a fresh Python that never imports the package itself.
    from test_autoload import python

    out, _ = compressed
    text = (out / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "import hf_factor_embed" not in snippet
    snippet = snippet.replace("PATH_OR_REPO_ID", str(out)).replace('"org/tiny-llama"', repr(str(out)))
    result = python(snippet + "\nprint(type(model.lm_head).__name__)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "FactorizedLMHead"


def test_the_spectrum_plot_is_a_png(compressed):
    out, _ = compressed
    width, height = png_size(out / "spectrum.png")
    assert width > 300 and height > 200


def test_eval_prints_perplexity_beside_the_dense_model(compressed, dense_dir, capsys):
    out, info = compressed
    code, stdout, _ = run_cli(
        capsys, "eval", out, "--text", dense_dir / "held_back.txt", "--compare", dense_dir / "dense"
    )
    assert code == 0
    lines = [line for line in stdout.splitlines() if line.strip().endswith(tuple("0123456789"))]
    assert len(lines) == 2
    assert float(lines[0].split()[-1]) == pytest.approx(info["evaluation"]["held_back"]["factorized"], rel=1e-3)
    assert float(lines[1].split()[-1]) == pytest.approx(info["evaluation"]["held_back"]["dense"], rel=1e-3)


def test_analyze_draws_spectrum_error_and_pca_and_suggests_a_rank(dense_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(
        capsys,
        "analyze",
        dense_dir / "dense",
        "--calibration",
        dense_dir / "calibration.txt",
        "--budget",
        "0.25",
        "--out",
        tmp_path / "a",
    )
    assert code == 0 and "budget 25%: rank" in stdout
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    (embedding,) = summary["embeddings"]  # tied: one matrix
    assert len(embedding["singular_values"]) == 64  # d = 64 singular values, one point each in the plot
    assert embedding["budget"]["rank"] == int(0.25 * 320 * 64 // (320 + 64))
    assert embedding["weighted_error"] is not None
    for name in ("spectrum.png", "error_input.png", "pca_input.png"):
        png_size(tmp_path / "a" / name)


def test_analyze_without_matplotlib_writes_the_numbers_and_names_the_extra(dense_dir, tmp_path, capsys, monkeypatch):
    # As installed with .[test] alone: importing matplotlib fails (None in sys.modules makes import raise).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "hf_factor_embed.measure.plots", raising=False)
    monkeypatch.delattr(hfe, "plots", raising=False)
    code, stdout, err = run_cli(capsys, "analyze", dense_dir / "dense", "--budget", "0.25", "--out", tmp_path / "a")
    assert code == 0 and "budget 25%: rank" in stdout
    assert 'pip install "hf-factor-embed[plots]"' in err and "Traceback" not in err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["embeddings"]
    assert not list((tmp_path / "a").glob("*.png"))


def test_a_missing_optional_dependency_is_one_line_naming_the_install(dense_dir, tmp_path, capsys, monkeypatch):
    import hf_factor_embed.pipeline.compress

    def needs_gguf(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")

    monkeypatch.setattr(hf_factor_embed.pipeline.compress, "compress", needs_gguf)
    code, _, err = run_cli(capsys, "compress", dense_dir / "dense", "--rank", "8", "--out", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("hf-factor-embed: error: No module named 'gguf'; pip install")


def test_densify_writes_a_plain_model_with_the_same_outputs(compressed, tmp_path, capsys, input_ids):
    out, _ = compressed
    code, _, _ = run_cli(capsys, "densify", out, "--out", tmp_path / "dense")
    assert code == 0
    factorized = AutoModelForCausalLM.from_pretrained(out)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert not factorized_layers(dense)
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(dense(input_ids).logits, factorized(input_ids).logits, rtol=1e-5, atol=1e-5)


class RecordingHub:
    """Stands in for the Hub's HTTP API at huggingface_hub's own seam: records what would be sent."""

    def __init__(self, fail: bool = False) -> None:
        self.repos, self.commits, self.validated, self.cards, self.fail = [], [], [], [], fail

    def install(self, monkeypatch) -> None:
        from huggingface_hub import HfApi

        hub = self

        def create_repo(self, repo_id, **kwargs):
            if hub.fail:
                import httpx

                raise httpx.ConnectError("[Errno 111] Connection refused")
            hub.repos.append((repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def create_commit(self, repo_id, operations, commit_message, **kwargs):
            from huggingface_hub import ModelCard

            hub.commits.append((repo_id, sorted(op.path_in_repo for op in operations), commit_message))
            (card,) = [op for op in operations if op.path_in_repo == "README.md"]
            with card.as_file() as f:  # what the Hub's /api/validate-yaml checks first: the front matter parses
                hub.cards.append(f.read().decode())
            hub.validated.append(ModelCard(hub.cards[-1]).data.to_dict())
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def test_push_uploads_the_folder_with_its_card_in_one_commit(compressed, monkeypatch, capsys):
    out, _ = compressed
    hub = RecordingHub()
    hub.install(monkeypatch)
    code, stdout, err = run_cli(capsys, "push", out, "me/tiny-factorized", "--private", "--token", "hf_x")
    assert code == 0 and "commit/abc" in stdout, err
    assert hub.repos == [("me/tiny-factorized", {"private": True, "exist_ok": True, "repo_type": "model"})]
    ((repo, paths, _),) = hub.commits
    expected = {p.name for p in out.iterdir()}
    assert repo == "me/tiny-factorized" and set(paths) == expected
    assert {"README.md", "config.json", "model.safetensors", "compression.json"} <= set(paths)
    assert hub.validated and hub.validated[0]["base_model"] == "org/tiny-llama"
    assert hub.cards[0].count('from_pretrained("me/tiny-factorized")') == 1  # the card names the repository


def test_a_network_failure_is_one_line_and_leaves_the_folder_untouched(compressed, monkeypatch, capsys):
    out, _ = compressed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    RecordingHub(fail=True).install(monkeypatch)
    code, _, err = run_cli(capsys, "push", out, "me/tiny-factorized")
    errors = [line for line in err.splitlines() if line.startswith("hf-factor-embed: error:")]
    assert code == 2 and len(errors) == 1 and "unchanged" in errors[0] and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_user_mistakes_are_one_line_exit_2_and_overwrite_nothing(compressed, dense_dir, tmp_path, capsys):
    out, _ = compressed
    dense = dense_dir / "dense"
    cal = dense_dir / "calibration.txt"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    cases = {
        "exactly one of": ["compress", dense, "--out", tmp_path / "o"],
        "rank=0 (--rank)": ["compress", dense, "--rank", "0", "--out", tmp_path / "o"],
        "text file not found": [
            "compress",
            dense,
            "--rank",
            "8",
            "--calibration",
            tmp_path / "no.txt",
            "--out",
            tmp_path / "o",
        ],
        "--overwrite": ["compress", dense, "--rank", "8", "--calibration", cal, "--out", tmp_path / "taken"],
        "already factorized": ["compress", out, "--rank", "8", "--out", tmp_path / "o2"],
        "no config.json": ["compress", tmp_path / "taken", "--rank", "8", "--out", tmp_path / "o3"],
        "nothing to densify": ["densify", dense, "--out", tmp_path / "d"],
        "not a factorized checkpoint": ["push", dense, "me/x"],
        "between 0 and 1": ["analyze", dense, "--budget", "2", "--out", tmp_path / "a"],
        "one of them": ["eval", out],
        "No such option": ["compress", dense, "--rnak", "8", "--out", tmp_path / "o"],
    }
    for message, argv in cases.items():
        code, _, err = run_cli(capsys, *argv)
        errors = [line for line in err.splitlines() if line.startswith("hf-factor-embed: error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (message, err)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_compress_with_integer_factors_reloads_identical(dense_dir, tmp_path, capsys, input_ids):
    code, _, err = run_cli(
        capsys, "compress", dense_dir / "dense", "--rank", "16", "--bits", "4", "--out", tmp_path / "q"
    )
    assert code == 0, err
    info = json.loads((tmp_path / "q" / "compression.json").read_text())
    assert info["bits"] == 4 and info["group_size"] == 32 and info["reload"]["identical"]
    assert info["band_bits"] == 8
    assert "4-bit integers" in (tmp_path / "q" / "README.md").read_text()
    assert "band's rows as 8-bit" in (tmp_path / "q" / "README.md").read_text()
    code, _, err = run_cli(
        capsys,
        "compress",
        dense_dir / "dense",
        "--rank",
        "16",
        "--bits",
        "4",
        "--band-bits",
        "4",
        "--out",
        tmp_path / "q4",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "q4" / "compression.json").read_text())["band_bits"] == 4
    code, _, err = run_cli(
        capsys, "compress", dense_dir / "dense", "--rank", "16", "--bits", "5", "--out", tmp_path / "x"
    )
    assert code == 2 and "bits=5" in err


def test_python_api_compress_matches_patch_model(dense_dir, tmp_path, input_ids):
    from hf_factor_embed.pipeline.compress import compress

    compress(dense_dir / "dense", tmp_path / "m", rank=16, plots=False)
    reference = hfe.patch_model(copy.deepcopy(tiny_llama()), rank=16)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, reference(input_ids).logits)


@pytest.mark.parametrize("damage", ["truncated", "config mismatch"])
def test_push_refuses_a_checkpoint_that_does_not_load_before_any_upload(
    compressed, tmp_path, monkeypatch, capsys, damage
):
    import shutil

    out, _ = compressed
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    if damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    else:
        config = json.loads((folder / "config.json").read_text())
        config["quantization_config"]["modules"]["input"]["rank"] = 12
        (folder / "config.json").write_text(json.dumps(config))
    hub = RecordingHub()
    hub.install(monkeypatch)
    code, _, err = run_cli(capsys, "push", folder, "me/tiny-factorized")
    errors = [line for line in err.splitlines() if line.startswith("hf-factor-embed: error:")]
    assert code == 2 and len(errors) == 1 and "nothing was uploaded" in errors[0], err
    assert hub.repos == [] and hub.commits == []


def test_densify_never_writes_over_its_input_and_leaves_no_factorized_card(compressed, tmp_path, capsys):
    import shutil

    out, _ = compressed
    folder = tmp_path / "model"
    shutil.copytree(out, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, _, err = run_cli(capsys, "densify", folder, "--out", folder, "--overwrite")
    assert code == 2 and "would write over the input" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    code, _, err = run_cli(capsys, "densify", folder, "--out", tmp_path / "dense")
    assert code == 0, err
    left = {p.name for p in (tmp_path / "dense").iterdir()}
    assert not {"README.md", "compression.json", "spectrum.png"} & left and "model.safetensors" in left
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    assert not list(tmp_path.glob(".dense.staging-*"))
