"""The command line and the main job on real models: MiniLM (compress with the encoder's evaluation) and the
SmolLM2 recipe. SmolLM2's compress -> eval -> analyze -> push run in the README test, as the README shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def texts(real_text, tmp_path_factory) -> dict[str, Path]:
    """Calibration: a slice of Python's reference (pydoc_data); evaluation: the Apache license text
    (/usr/share/common-licenses), a kind never calibrated on."""
    from hf_factor_embed.calibration.data import license_text

    root = tmp_path_factory.mktemp("texts")
    files = {"calibration": real_text[20000:36000], "licenses": license_text()[:8000]}
    for name, text in files.items():
        (root / f"{name}.txt").write_text(text)
    return {name: root / f"{name}.txt" for name in files}


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
