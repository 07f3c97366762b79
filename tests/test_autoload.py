"""Serving without an edit: a factorized checkpoint loads in a fresh Python that never wrote
``import hf_factor_embed`` (the autoload .pth), start-up stays light, and without the plugin loading fails."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_llama, tiny_tokenizer

import hf_factor_embed as hfe

PTH = "hf_factor_embed-autoload.pth"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("autoload") / "model"
    hfe.patch_model(copy.deepcopy(tiny_llama()), rank=8).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def python(code: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the repository, so the package is found only the way an installed one is
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "warning"}
    command = [sys.executable, *flags, "-c", textwrap.dedent(code)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_the_pth_is_installed_in_site_packages():
    assert (Path(sysconfig.get_paths()["purelib"]) / PTH).is_file(), "pip install -e . (or the wheel) ships it"


def test_start_up_imports_neither_the_package_nor_torch(tmp_path):
    result = python(
        "import sys; print(sorted(m for m in ('hf_factor_embed', 'torch', 'transformers') if m in sys.modules))",
        cwd=tmp_path,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_from_pretrained_and_pipeline_load_it_without_an_import(checkpoint, tmp_path):
    result = python(
        f"""
        import sys
        from transformers import AutoModelForCausalLM, pipeline
        model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r})
        assert "hf_factor_embed" in sys.modules  # loaded by the hook, not by this script
        print(type(model.lm_head).__name__, model.lm_head.weight is model.model.embed_tokens.weight)
        generate = pipeline("text-generation", model={str(checkpoint)!r})
        print(type(generate.model.lm_head).__name__, len(generate("w1 w2", max_new_tokens=2)[0]["generated_text"]) > 0)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["FactorizedLMHead", "True", "FactorizedLMHead", "True"]


def test_without_the_plugin_loading_fails_loudly(checkpoint, tmp_path):
    # -S: no site processing, so neither the .pth nor the editable install: the package is as good as absent.
    purelib = sysconfig.get_paths()["purelib"]
    result = python(
        f"""
        import sys
        sys.path.append({purelib!r})
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(checkpoint)!r})
        """,
        "-S",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Unknown quantization type, got hf_factor_embed" in result.stderr
