"""Bad input is refused with a message that names the problem and the fix, and destroys nothing."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from transformers import AutoModelForCausalLM, PreTrainedModel

import hf_factor_embed as hfe
from hf_factor_embed import AlreadyPatchedError, CheckpointError, FactorEmbedError, UnsupportedModelError


def test_second_patch_is_refused():
    model = hfe.patch_model(tiny_llama(), rank=8)
    with pytest.raises(AlreadyPatchedError, match="densify"):
        hfe.patch_model(model, rank=4)


def test_reloaded_model_cannot_be_patched_again(tmp_path):
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(tmp_path)
    with pytest.raises(AlreadyPatchedError):
        hfe.patch_model(AutoModelForCausalLM.from_pretrained(tmp_path), rank=4)


@pytest.mark.parametrize("rank", [0, -3, 54, 64, 65, 10_000, 2.5, True, "8"])
def test_bad_rank_is_refused_and_model_untouched(rank):
    model = tiny_llama()
    emb = model.get_input_embeddings()
    with pytest.raises(FactorEmbedError, match=r"1\.\.53"):
        hfe.patch_model(model, rank=rank)
    assert model.get_input_embeddings() is emb


@pytest.mark.parametrize("kwargs", [{}, {"rank": 8, "budget": 0.5}, {"budget": 1.5}, {"budget": 0}])
def test_rank_or_budget_needed_exactly_once(kwargs):
    with pytest.raises(FactorEmbedError):
        hfe.patch_model(tiny_llama(), **kwargs)


def test_tied_embedding_cannot_be_factorized_alone():
    with pytest.raises(FactorEmbedError, match="tied"):
        hfe.patch_model(tiny_llama(tied=True), rank=8, roles=("input",))


def test_unknown_role_is_refused():
    with pytest.raises(UnsupportedModelError, match="position"):
        hfe.patch_model(tiny_llama(), rank=8, roles=("input", "output", "position"))


def test_meta_device_model_is_refused():
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_llama().config)
    with pytest.raises(FactorEmbedError, match="meta device"):
        hfe.patch_model(model, rank=8)


def test_quantized_model_is_refused():
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    model.hf_quantizer = object()
    with pytest.raises(FactorEmbedError, match="quantized"):
        hfe.patch_model(model, rank=8)


def test_integer_embedding_is_refused():
    model = tiny_llama(tied=False)
    emb = model.get_input_embeddings()
    emb.weight = torch.nn.Parameter(torch.zeros_like(emb.weight, dtype=torch.int8), requires_grad=False)
    with pytest.raises(FactorEmbedError, match="not float"):
        hfe.patch_model(model, rank=8)


def test_model_without_embeddings_is_refused():
    from transformers import PretrainedConfig

    class ToyConfig(PretrainedConfig):
        model_type = "toy_without_embeddings"

    class NoEmbeddings(PreTrainedModel):
        config_class = ToyConfig
        _supports_sdpa = True

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(4, 4)
            self.post_init()

    with pytest.raises(UnsupportedModelError, match="register_adapter"):
        hfe.patch_model(NoEmbeddings(ToyConfig()), rank=2)


def test_not_a_transformers_model_is_refused():
    with pytest.raises(UnsupportedModelError, match="PreTrainedModel"):
        hfe.patch_model(torch.nn.Embedding(10, 4), rank=2)


def test_a_rank_that_saves_nothing_is_refused_before_any_work():
    """Rank 54 of a 320 x 64 matrix stores 54 * 384 = 20,736 values, more than its 20,480: no compression, and the
    banded method would spend it all on exact rows, a "compressed" model larger than the dense one."""
    with pytest.raises(FactorEmbedError, match=r"101\.2%"):
        hfe.patch_model(tiny_llama(), rank=54, calibration=torch.arange(320).repeat(4))


def test_full_rank_layer_is_refused_on_save(tmp_path):
    model = hfe.patch_model(tiny_llama(), rank=8)
    layer = model.get_input_embeddings()
    layer.rank = layer.embedding_dim  # a layer built by hand at full rank
    with pytest.raises(FactorEmbedError, match="densify"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    hfe.patch_model(tiny_llama(tied=False), rank=8).save_pretrained(tmp_path)
    return tmp_path


def test_truncated_checkpoint_is_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|damaged"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_missing_factor_is_refused(checkpoint):
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    del tensors["lm_head.basis"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head.basis"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_edited_rank_in_config_is_refused(checkpoint):
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["modules"]["input"]["rank"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="disagree"):
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_failed_save_leaves_the_good_checkpoint_intact(checkpoint, monkeypatch):
    import transformers.modeling_utils as mu

    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    model = hfe.patch_model(tiny_llama(tied=False), rank=4)

    def fail_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mu, "safe_save_file", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(checkpoint)
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert not [p for p in checkpoint.parent.iterdir() if ".saving-" in p.name]
    monkeypatch.undo()
    AutoModelForCausalLM.from_pretrained(checkpoint)  # still loads


def test_fresh_process_without_the_plugin_fails_loudly(checkpoint):
    """transformers alone must never load a factorized checkpoint as if it were dense."""
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(checkpoint)!r})\n"
        "assert 'hf_factor_embed' not in sys.modules\n"
        "print('LOADED')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    # -S: no site processing, hence no autoload .pth (a Python where the plugin is not installed); the
    # site-packages folder is put back by hand for transformers itself.
    code = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r})\n" + code
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "LOADED" not in result.stdout
    assert "hf_factor_embed" in result.stderr  # the warning names the missing plugin
    assert "mismatch" in result.stderr.lower()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown factorization method"):
        hfe.patch_model(tiny_llama(), rank=8, method="magic")


def test_factorization_that_will_not_fit_in_memory_is_refused_up_front(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 1024})())
    model = tiny_llama()
    with pytest.raises(FactorEmbedError, match="GiB of free memory"):
        hfe.patch_model(model, rank=8)
    assert not any(isinstance(m, hfe.FactorizedLayer) for m in model.modules())


def test_import_is_light():
    """Importing the package registers the integration without loading transformers' modeling code."""
    heavy = [
        "transformers.modeling_utils",
        "hf_factor_embed.recovery",
        "hf_factor_embed.cli",
        "hf_factor_embed.pipeline.compress",
        "hf_factor_embed.hub",
        "hf_factor_embed.measure.plots",
        "hf_factor_embed.export",
        "onnx",
        "onnxruntime",
        "executorch",
        "matplotlib",
        "peft",
        "datasets",
        "typer",
    ]
    code = f"import sys, hf_factor_embed; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("calibration", [torch.tensor([], dtype=torch.long), "", []])
def test_empty_calibration_is_a_clear_error(calibration):
    model = tiny_llama()
    with pytest.raises(FactorEmbedError, match="no (tokens|text)"):
        hfe.patch_model(model, rank=8, calibration=calibration, tokenizer=lambda t, **_: {"input_ids": []})
    assert not any(isinstance(m, hfe.FactorizedLayer) for m in model.modules())


def test_models_built_from_one_config_object_stay_independent(tmp_path):
    """patch_model marks its own model factorized, never the config object other models were built from."""
    from transformers import LlamaForCausalLM

    cfg = tiny_llama().config
    first = LlamaForCausalLM(cfg)
    hfe.patch_model(first, rank=8)
    assert not hasattr(cfg, "quantization_config")
    assert first.config.quantization_config.quant_method == "hf_factor_embed"
    assert first.model.config is first.config  # the base model reads the same (new) config
    second = LlamaForCausalLM(cfg)
    hfe.patch_model(second, rank=4)  # not refused as "factorized already"
    tiny_llama().save_pretrained(tmp_path)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path, config=cfg)
    assert not any(isinstance(m, hfe.FactorizedLayer) for m in dense.modules())


#: The package's parts, lowest first: a part imports only parts of its own rank or below (DESIGN.md's graph), and
#: parts of one rank never import each other in a cycle.
PART_RANKS = {
    **dict.fromkeys(("errors", "lazy", "options", "layers", "quiet"), 0),
    **dict.fromkeys(("config", "adapters"), 1),
    "quantizer": 2,
    **dict.fromkeys(("arguments", "folders", "models"), 3),
    **dict.fromkeys(("calibration", "factorize", "measure"), 4),
    **dict.fromkeys(("pipeline", "hub", "recovery", "export"), 5),
    **dict.fromkeys(("cli", "__init__"), 6),
}


def _part_imports() -> dict[str, set[str]]:
    """Part of the package -> the parts it imports (module level and inside functions alike)."""
    import ast

    root = Path(hfe.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).with_suffix("").parts
        package = ("hf_factor_embed", *relative)[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            target = [*package[: len(package) - node.level + 1], *(node.module.split(".") if node.module else [])]
            names = [target] if node.module else [[*target, alias.name] for alias in node.names]
            for name in names:
                part = name[1] if len(name) > 1 and name[1] in PART_RANKS else "__init__"
                edges.setdefault(relative[0], set()).add(part)
    return edges


def test_imports_point_one_way():
    """Every part imports only parts below it or beside it, and no cycle runs between parts."""
    edges = _part_imports()
    assert set(edges) <= set(PART_RANKS), f"parts without a rank: {set(edges) - set(PART_RANKS)}"
    upward = [(a, b) for a, targets in edges.items() for b in targets if PART_RANKS[b] > PART_RANKS[a]]
    assert not upward, upward

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(
            n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
            for n in edges.get(start, ())
            if n != start
        )

    cycles = sorted((a, b) for a, targets in edges.items() for b in targets if b != a and reaches(b, a, set()))
    assert not cycles, cycles


@pytest.fixture
def banded_checkpoint(tmp_path) -> Path:
    calibration = torch.arange(100, 140).repeat(20)
    hfe.patch_model(tiny_llama(), rank=8, calibration=calibration).save_pretrained(tmp_path)
    return tmp_path


def _edit_band_index(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    (key,) = [k for k in tensors if k.endswith("dense_index")]
    tensors[key] = edit(tensors[key].clone())
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda i: i.index_fill_(0, torch.tensor([3]), 60000), "holds 60000, outside the vocabulary 0..319"),
        (lambda i: i.index_fill_(0, torch.tensor([0]), -1), "holds -1, outside"),
        (lambda i: i.index_fill_(0, torch.tensor([4]), int(i[3])), "twice"),
        (lambda i: i.flip(0), "out of order"),
    ],
)
def test_an_edited_band_index_is_refused_on_load(banded_checkpoint, edit, message):
    from transformers import AutoModelForCausalLM

    _edit_band_index(banded_checkpoint, edit)
    with pytest.raises(CheckpointError, match=message):
        AutoModelForCausalLM.from_pretrained(banded_checkpoint)
