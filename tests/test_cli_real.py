"""The command line and the main job on real models: SmolLM2 (compress -> eval -> analyze -> push to the
recording stand-in) and MiniLM (compress with the encoder's evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import RecordingHub, png_size, run_cli
from transformers import AutoModelForCausalLM

from hf_factor_embed.quantizer.structure import factorized_layers

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def texts(real_text, tmp_path_factory) -> dict[str, Path]:
    """Calibration: a slice of Python's reference (pydoc_data); evaluation: another slice of it, held back,
    and the Apache license text (/usr/share/common-licenses), a kind never calibrated on."""
    from hf_factor_embed.calibration.data import license_text

    root = tmp_path_factory.mktemp("texts")
    files = {"calibration": real_text[20000:36000], "pydoc": real_text[:8000], "licenses": license_text()[:8000]}
    for name, text in files.items():
        (root / f"{name}.txt").write_text(text)
    return {name: root / f"{name}.txt" for name in files}


def test_smollm2_compress_eval_analyze_push(smollm2_dir, texts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "smollm2-r64"
    code, stdout, err = run_cli(
        capsys,
        "compress",
        smollm2_dir,
        "--rank",
        "64",
        "--calibration",
        texts["calibration"],
        "--eval-text",
        texts["pydoc"],
        "--eval-text",
        texts["licenses"],
        "--measure",
        "none",
        "--out",
        out,
        "--base-model-id",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert code == 0, err
    info = json.loads((out / "compression.json").read_text())
    assert info["reload"] == {"identical": True, "tied": True, "factorized_layers": 2}
    assert info["param_bytes_factorized"] < 0.85 * info["param_bytes_dense"]
    assert set(info["evaluation"]) == {"calibration", "pydoc", "licenses"}  # the served file's held-back part too
    assert info["evaluation"]["calibration"]["served"] and not info["evaluation"]["licenses"]["served"]
    for e in info["evaluation"].values():
        assert e["factorized"] > e["dense"] > 1  # a rank-64 head loses some quality; both are real perplexities
    width, _ = png_size(out / "spectrum.png")
    assert width > 300
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(factorized_layers(model)) == 2

    code, stdout, _ = run_cli(capsys, "eval", out, "--text", texts["pydoc"], "--compare", smollm2_dir)
    assert code == 0 and stdout.count("\n") >= 3

    code, stdout, _ = run_cli(
        capsys,
        "analyze",
        smollm2_dir,
        "--calibration",
        texts["calibration"],
        "--budget",
        "0.3",
        "--out",
        tmp_path / "analysis",
    )
    assert code == 0
    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    (embedding,) = summary["embeddings"]
    assert embedding["shape"] == [49152, 576] and len(embedding["singular_values"]) == 576
    assert embedding["budget"]["rank"] == int(0.3 * 49152 * 576 // (49152 + 576))

    hub = RecordingHub()
    hub.install(monkeypatch)
    code, stdout, _ = run_cli(capsys, "push", out, "me/smollm2-r64")
    assert code == 0 and hub.validated[0]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_minilm_compress_reports_the_agreement_with_the_dense_encoder(minilm_dir, texts, tmp_path, capsys):
    out = tmp_path / "minilm-r128"
    code, _, err = run_cli(
        capsys,
        "compress",
        minilm_dir,
        "--rank",
        "128",
        "--calibration",
        texts["calibration"],
        "--eval-text",
        texts["licenses"],
        "--measure",
        "none",
        "--out",
        out,
    )
    assert code == 0, err
    info = json.loads((out / "compression.json").read_text())
    agreement = info["evaluation"]["licenses"]
    assert agreement["metric"].startswith("cosine agreement") and 0.5 < agreement["factorized"] < 1.0
    assert info["reload"]["identical"] and info["reload"]["factorized_layers"] >= 1


def test_the_main_job_writes_checkpoint_card_and_plot(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    from compress_smollm2 import main

    result = main(
        ["--rank", "128", "--eval-tokens", "512", "--calibration-tokens", "2048", "--out", str(tmp_path / "m")]
    )
    assert result["reload"]["identical"] and result["reload"]["tied"]
    assert {"README.md", "spectrum.png", "compression.json", "model.safetensors"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    assert "licenses (other kind)" in result["evaluation"]
