"""Export to ONNX: the file runs in ONNX Runtime and decodes exactly what transformers decodes, its integers kept,
a tied pair stored once; bad input refused before anything loads."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import onnx
import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama, tiny_tokenizer, tiny_words
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

import hf_factor_embed as hfe
from hf_factor_embed.cli import main
from hf_factor_embed.export import export
from hf_factor_embed.export.decoder import use_stored_factors
from hf_factor_embed.export.runtime import OnnxDecoder
from hf_factor_embed.export.target import PLAIN, RUNTIMES
from hf_factor_embed.factorize.banded import BandedMethod
from hf_factor_embed.layers.factorized import SHORTLIST_PARTIAL
from hf_factor_embed.layers.lookups import pair_offsets

#: Long enough to pass tiny Gemma-3's sliding window below, and to make the greedy check more than one token.
PROMPTS = [tiny_words(12, seed=3), tiny_words(5, seed=4)]


def tiny_gemma3(hidden_size: int = 64) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,  # shorter than the prompts: the exported mask must keep the window
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=VOCAB - 1,
    )
    return Gemma3ForCausalLM(config).eval()


def _saved(model, folder, bits=None):
    calibration = torch.randint(1, VOCAB, (1, 600), generator=torch.Generator().manual_seed(0))
    hfe.patch_model(model, rank=16, calibration=calibration, bits=bits)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _initializers(path) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("bits", [None, 4])
def test_decoder_greedy_tokens_match_transformers(family, bits, tmp_path):
    model = tiny_llama() if family == "llama" else tiny_gemma3()
    folder = _saved(model, tmp_path / "ckpt", bits)

    report = export(folder, tmp_path / "onnx", prompts=PROMPTS)

    assert report.identical and report.kind == "decoder"
    assert report.embedding_bytes == report.checkpoint_embedding_bytes
    names = _initializers(report.file)
    codes = [n for n in names if n.endswith("codes.q" if bits else "codes.values")]
    assert len(codes) == 1  # tied: one copy for the embedding and the head
    if bits:
        assert names[codes[0]].data_type == onnx.TensorProto.UINT8  # two 4-bit codes a byte, as stored
    assert (tmp_path / "onnx" / "tokenizer.json").is_file() and (tmp_path / "onnx" / "export.json").is_file()


def test_band_in_groups_exports_and_decodes_like_transformers(tmp_path):
    """A band wider than its groups of 64 (int8): the file's product runs a group at a time (what ONNX Runtime
    folds at load is one float matrix) and its greedy tokens are transformers'."""
    folder = _saved(tiny_gemma3(hidden_size=128), tmp_path / "ckpt", bits=4)
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["band_group_size"] == 64

    report = export(folder, tmp_path / "onnx", prompts=PROMPTS)

    assert report.identical
    ops = {n.op_type for n in onnx.load(report.file).graph.node}
    assert "ReduceSum" in ops  # the groups' scaled products summed


def _body_linears(model) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())


@pytest.mark.parametrize(
    ("family", "body", "op"), [("llama", "int4", "MatMulNBits"), ("gemma3", "int8", "MatMulInteger")]
)
def test_onnx_body_is_quantized_by_onnx_runtime_and_the_factors_keep_their_integers(family, body, op, tmp_path):
    model = tiny_llama() if family == "llama" else tiny_gemma3()
    linears = _body_linears(model)
    folder = _saved(model, tmp_path / "ckpt", 4)

    report = export(folder, tmp_path / "onnx", body=body, prompts=PROMPTS)

    assert report.identical and report.body == body and 0 <= report.body_agreement <= 1
    graph = onnx.load(report.file).graph
    assert report.quantized_linears == linears == sum(n.op_type == op for n in graph.node)
    assert not any(n.op_type == "MatMul" and n.input[1] in _initializers(report.file) for n in graph.node)
    codes = [i for i in graph.initializer if i.name.endswith("codes.q")]
    assert len(codes) == 1 and codes[0].data_type == onnx.TensorProto.UINT8  # the factors' own integers, as stored
    assert report.embedding_bytes == report.checkpoint_embedding_bytes
    assert report.file_bytes < export(folder, tmp_path / "fp32", prompts=PROMPTS).file_bytes


def test_onnx_body_int4_decodes_after_the_cli(tmp_path, capsys):
    folder = _saved(tiny_llama(), tmp_path / "ckpt", 8)
    capsys.readouterr()
    assert main(["export", str(folder), "--out", str(tmp_path / "onnx"), "--body", "int4"]) == 0
    assert "body int4: 14 linears quantized" in capsys.readouterr().out
    tokens = OnnxDecoder(tmp_path / "onnx" / "model.onnx").greedy([1, 5, 9], 4)
    assert len(tokens) == 4 and all(0 <= t < VOCAB for t in tokens)


def test_decoder_continues_from_its_cache(tmp_path):
    """Tokens fed one at a time through the cache give the logits of the whole sequence fed at once."""
    report = export(_saved(tiny_gemma3(), tmp_path / "ckpt", 4), tmp_path / "onnx", prompts=PROMPTS)
    runtime = OnnxDecoder(report.file)
    ids = torch.randint(1, VOCAB, (1, 9), generator=torch.Generator().manual_seed(5)).numpy()
    whole, _ = runtime.step(ids, runtime.empty_cache())
    logits, cache = runtime.step(ids[:, :6], runtime.empty_cache())
    for i in range(6, 9):
        logits, cache = runtime.step(ids[:, i : i + 1], cache)
    assert abs(whole - logits).max() < 1e-4


def test_encoder_hidden_states_match_transformers(tmp_path):
    report = export(_saved(tiny_bert(), tmp_path / "ckpt"), tmp_path / "onnx", prompts=PROMPTS)
    assert report.kind == "encoder" and report.identical and report.max_abs_difference < 1e-4


def test_factors_changed_since_saving_are_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_saved(tiny_llama(), tmp_path / "ckpt", 8))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.001)
    with pytest.raises(hfe.FactorEmbedError, match="save it with save_pretrained"):
        use_stored_factors(model)


@pytest.mark.parametrize(
    ("format", "module", "extra"), [("onnx", "onnxruntime", "export"), ("executorch", "executorch", "executorch")]
)
def test_missing_extra_is_one_line_naming_the_install(format, module, extra, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ckpt"
    hfe.patch_model(tiny_llama(), rank=8).save_pretrained(folder)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))

    capsys.readouterr()  # the save's progress bars
    code = main(["export", str(folder), "--out", str(tmp_path / "out"), "--format", format])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f'pip install "hf-factor-embed[{extra}]"' in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_executorch_program_decodes_like_transformers(family, tmp_path):
    pytest.importorskip("executorch.runtime")
    model = tiny_llama() if family == "llama" else tiny_gemma3()
    report = export(_saved(model, tmp_path / "ckpt", 4), tmp_path / "pte", format="executorch", prompts=PROMPTS)
    assert report.identical and report.file.endswith(".pte")
    # the 4-bit matrices held as the fp32 values they stand for (XNNPACK's matmuls read floats)
    assert report.embedding_bytes > 2 * report.checkpoint_embedding_bytes


def test_executorch_body_is_quantized_as_executorch_quantizes_llms(tmp_path):
    pytest.importorskip("executorch.runtime")
    model = tiny_llama()
    linears = _body_linears(model)
    body_fp32_bytes = sum(m.weight.numel() * 4 for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    folder = _saved(model, tmp_path / "ckpt", 4)

    report = export(folder, tmp_path / "pte", format="executorch", body="int4", prompts=PROMPTS)

    assert report.quantized_linears == linears and report.body == "int4" and 0 <= report.body_agreement <= 1
    assert report.embedding_bytes > report.checkpoint_embedding_bytes  # the factors' matrices held as fp32
    assert report.identical or report.notes  # XNNPACK may round a near-tie apart from torchao's eager kernels
    # the body's 4-bit weights and their group scales, not floats
    assert report.file_bytes - report.embedding_bytes < body_fp32_bytes / 2


def test_the_onnx_runtime_snippet_of_the_docs_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/export.md's ONNX Runtime snippet (the card shows the same), pointed at a tiny export."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "onnxruntime" in b)
    report = export(_saved(tiny_llama(), tmp_path / "ckpt", 4), tmp_path / "onnx", prompts=PROMPTS)
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    Path("out/smollm2-r256-onnx").symlink_to(Path(report.file).parent)
    capsys.readouterr()

    exec(compile(snippet, "docs/export.md", "exec"), {})

    runtime = OnnxDecoder(report.file)
    expected = runtime.greedy(tiny_tokenizer()("The capital of France is").input_ids, 16)
    assert capsys.readouterr().out == "".join(tiny_tokenizer().decode([t]) for t in expected)


@pytest.mark.parametrize("format", ["onnx", "executorch"])
def test_product_coded_tail_exports_with_its_codes(format, tmp_path):
    """The tail's uint8 codes stay codes in the file, read by the same lookup; greedy tokens are transformers'."""
    if format == "executorch":
        pytest.importorskip("executorch.runtime")
    from test_product_tail import pq_model

    folder = tmp_path / "ckpt"
    model = pq_model()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    body = "int4" if format == "onnx" else "fp32"  # ONNX: the body quantizer must leave the tail's matmuls alone

    report = export(folder, tmp_path / format, format=format, body=body, prompts=PROMPTS)

    assert report.identical
    if format == "executorch":  # float factors as the checkpoint holds them, and the token -> band slot table
        vocab = model.get_input_embeddings().num_embeddings
        assert report.embedding_bytes == report.checkpoint_embedding_bytes + vocab * 8
    if format == "onnx":
        assert report.embedding_bytes == report.checkpoint_embedding_bytes
        codes = [i for n, i in _initializers(report.file).items() if n.endswith("tail_codes")]
        assert len(codes) == 1 and codes[0].data_type == onnx.TensorProto.UINT8
        quantized = [n.name for n in onnx.load(report.file).graph.node if n.op_type == "MatMulNBits"]
        assert report.quantized_linears == len(quantized) == _body_linears(model)
        inputs = [i for n in onnx.load(report.file).graph.node if n.name in quantized for i in n.input]
        assert not any("factors" in i for i in inputs)


def test_integer_product_coded_tail_exports_with_int8_columns(tmp_path):
    """With integer factors the tail's outlier columns stay int8 in the file; greedy tokens are transformers'. (The
    file holds every row's outlier columns, the checkpoint those outside the band only.)"""
    from test_product_tail import wide_vocab_llama

    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_exact_columns=4)
    model = hfe.patch_model(wide_vocab_llama(), rank=16, method=method, calibration=calibration, bits=4)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    report = export(folder, tmp_path / "onnx", format="onnx", prompts=PROMPTS)

    assert report.identical and report.embedding_bytes >= report.checkpoint_embedding_bytes
    columns = [i for n, i in _initializers(report.file).items() if "tail_column_values" in n and n.endswith("q")]
    assert len(columns) == 1 and columns[0].data_type == onnx.TensorProto.INT8


@pytest.mark.parametrize(("bits", "group"), [(8, 64), (8, None), (4, 32), (4, None), (None, None)])
def test_stored_matrix_reads_what_was_stored(bits, group):
    """Rows, the whole matrix and products, in every storage layout."""
    from hf_factor_embed.export.layers import StoredMatrix
    from hf_factor_embed.quantizer.rounding import round_in_place

    values = torch.randn(50, 128, generator=torch.Generator().manual_seed(0))
    if bits:
        round_in_place(values, bits, group)
    stored = StoredMatrix(values, bits, group, "m")
    x = torch.randn(3, 128)
    ids = torch.tensor([[4, 0], [49, 7]])
    assert torch.equal(stored.matrix(), values) and torch.equal(stored.rows(ids), values[ids])
    torch.testing.assert_close(stored.linear(x), x @ values.T)
    if bits:
        assert stored.q.numel() * stored.q.element_size() == values.numel() * bits // 8  # the checkpoint's bytes
    held_as_float = StoredMatrix(values, bits, group, "m", as_float=True)  # ExecuTorch's: products read fp32
    assert held_as_float.values.dtype == torch.float32 and torch.equal(held_as_float.matrix(), values)
    assert torch.equal(held_as_float.linear(x), x @ values.T) and torch.equal(held_as_float.rows(ids), values[ids])
    if bits and group:  # ONNX's product for groups: a group of columns at a time, scaled after
        torch.testing.assert_close(stored._grouped_linear(x), x @ values.T)
        torch.testing.assert_close(stored._grouped_linear(x[None, :, None]), (x @ values.T)[None, :, None])
    in_nbits_layout = StoredMatrix(values, bits, group, "m", matmul_nbits=True)  # ONNX's: MatMulNBits' shapes
    assert in_nbits_layout.matmul_nbits == (bits == 4)  # 4 bits in whole blocks of a power of two
    if in_nbits_layout.matmul_nbits:  # the same bytes, (rows, blocks, bytes a block)
        block = group or 128
        assert in_nbits_layout.q.shape == (50, 128 // block, block // 2)
        assert torch.equal(in_nbits_layout.q.flatten(1), stored.q)
    assert torch.equal(in_nbits_layout.matrix(), values) and torch.equal(in_nbits_layout.rows(ids), values[ids])
    torch.testing.assert_close(in_nbits_layout.linear(x), x @ values.T)


def test_onnx_low_rank_products_read_the_stored_4bit_codes_with_matmul_nbits(tmp_path):
    """A 4-bit A in whole blocks is a MatMulNBits weight in the file (ONNX Runtime reads the integers, nothing is
    folded to floats), shared with the embedding's row gathers; greedy tokens are transformers'."""
    from test_product_tail import wide_vocab_llama

    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=16, tail_exact_columns=4)
    model = hfe.patch_model(wide_vocab_llama(), rank=24, method=method, calibration=calibration, bits=4)
    assert model.model.embed_tokens.weight.shape[1] == 16  # A: 16 columns, one block of 16 a row
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    report = export(folder, tmp_path / "onnx", format="onnx", body="int4", prompts=PROMPTS)

    assert report.identical
    graph = onnx.load(report.file).graph
    factor_nodes = [n for n in graph.node if n.op_type == "MatMulNBits" and any("codes.q" in i for i in n.input)]
    assert len(factor_nodes) == 1  # the head's low-rank part; the body's linears are the others
    codes = [i for i in graph.initializer if i.name.endswith("codes.q")]
    assert len(codes) == 1 and list(codes[0].dims)[1:] == [1, 8]  # one copy, in MatMulNBits' shape
    assert report.quantized_linears == _body_linears(model)


EXECUTORCH = RUNTIMES["executorch"]


def test_precomputed_factors_keep_the_codes_as_codes():
    """ExecuTorch's factors: the matrices also as fp32 and the token -> band slot map as a table, the product-coded
    tail's codes still uint8 and every row's; the same rows and map."""
    from test_product_tail import wide_vocab_llama

    from hf_factor_embed.export.layers import ExportedFactors

    calibration = torch.randint(1, 300, (4000,), generator=torch.Generator().manual_seed(1))
    method = BandedMethod(0.5, tail="pq", tail_sub_dim=8, tail_rank=4, tail_exact_columns=4)
    model = hfe.patch_model(wide_vocab_llama(), rank=16, method=method, calibration=calibration, bits=4)
    layer = model.model.embed_tokens
    stored, floats = (
        ExportedFactors(layer, model.config.quantization_config, "embed", runtime=r) for r in (PLAIN, EXECUTORCH)
    )
    ids = torch.arange(layer.num_embeddings)
    assert floats.tail_codes.dtype == torch.uint8 and stored.band.q.dtype == torch.int8
    assert floats.band.values.dtype == floats.codes.values.dtype == torch.float32
    assert torch.equal(floats.codes.rows(ids), stored.codes.rows(ids))
    assert torch.equal(floats.tail_rows(ids), stored.tail_rows(ids))
    assert torch.equal(floats.band_slot_table, stored.band_slots())
    config = model.config.quantization_config
    shortlisted = ExportedFactors(layer, config, "embed", shortlist=True, runtime=EXECUTORCH)
    # a shortlist head's codes, every row's, held as int32 offsets in two tables split after the first stage: the
    # first stage's into pair tables (two subspaces an offset), the rest code + subspace x centroids; the uint8 codes
    # are not kept, and the embedding's rows read the offsets
    assert shortlisted.code_rows() is None and shortlisted.tail_codes is None
    first, rest, paired = shortlisted.held_offsets()
    m, centroids = layer.tail_codes.shape[1], layer.codebooks.shape[1]
    split = m // SHORTLIST_PARTIAL
    within = torch.arange(m, dtype=torch.int32) * centroids
    assert paired and first.dtype == rest.dtype == torch.int32
    assert torch.equal(first, pair_offsets(layer.tail_codes[:, :split], centroids))
    assert torch.equal(rest, (layer.tail_codes.int() + within)[:, split:])
    assert torch.equal(shortlisted.tail_rows(ids), stored.tail_rows(ids))
    plain = ExportedFactors(layer, config, "embed", shortlist=True, runtime=replace(EXECUTORCH, paired_codes=False))
    first, rest, paired = plain.held_offsets()  # one subspace an offset
    assert not paired and torch.equal(torch.cat([first, rest], 1), layer.tail_codes.int() + within)
    assert torch.equal(plain.tail_rows(ids), stored.tail_rows(ids))
    assert stored.held_offsets() is None and floats.held_offsets() is None  # only a shortlist head reads them


@pytest.mark.parametrize("shortlist", [8, 10**6])  # two stages; a list so long that the first is skipped
@pytest.mark.parametrize("runtime", ["onnx", "executorch"])
def test_each_runtimes_shortlist_reads_the_same_logits(runtime, shortlist):
    """The runtimes' layouts give the eager layer's shortlist logits, for one position and for several: ONNX
    Runtime's (a gather along the centroids, the codes cast per step) to the bit; ExecuTorch's (paired offsets held
    ready, summed by a product with ones) the same tokens listed and the same sums added in another order."""
    full, head = _shortlist_head(shortlist=shortlist, runtime=RUNTIMES[runtime])
    _, eager = _shortlist_head(shortlist=shortlist)
    hidden = torch.randn(3, 2, full.embedding_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for positions in (hidden[:1, :1], hidden):
            ours, reference = head(positions), eager(positions)
            if runtime == "onnx":
                assert torch.equal(ours, reference)
            assert torch.equal(ours.isfinite(), reference.isfinite())
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def _shortlist_head(shortlist: int, runtime=PLAIN):
    from test_product_tail import pq_model

    model = pq_model()
    full = model.get_output_embeddings()
    use_stored_factors(model, shortlist, runtime)
    return full, model.get_output_embeddings()


@pytest.mark.parametrize("shortlist", [None, 10**6])
def test_stored_factor_layers_compute_what_transformers_computes(shortlist):
    """The exported embedding's rows and head's logits equal the layers', with every row's codes (the full head)
    and with the tail's rows only (a shortlist file; a list as long as the tail is the full head)."""
    from test_product_tail import pq_model

    model = pq_model()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    ids = torch.arange(embedding.num_embeddings)[None]
    hidden = torch.randn(2, 3, head.embedding_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        rows, logits = embedding(ids), head(hidden)
        use_stored_factors(model, shortlist)
        exported = model.get_output_embeddings()
        assert exported.factors.tail_rows_only == (shortlist is not None)
        torch.testing.assert_close(model.get_input_embeddings()(ids), rows)
        torch.testing.assert_close(exported(hidden), logits)


def test_shortlist_head_is_exact_on_the_band_and_its_list():
    full, head = _shortlist_head(shortlist=8)
    hidden = torch.randn(2, 3, full.embedding_dim, generator=torch.Generator().manual_seed(0))
    expected, logits = full(hidden), head(hidden)

    listed = logits.isfinite()
    assert (listed.sum(-1) == full.num_dense_rows + 8).all()  # the band and k tail tokens, the rest -inf
    torch.testing.assert_close(logits[listed], expected[listed])
    assert listed[..., full.dense_index].all()


def test_shortlist_reads_the_best_by_partial_logit_among_the_best_by_coarse_logit():
    """The two stages, computed directly: the SHORTLIST_WIDEN * k best tail tokens by coarse logit (low-rank part
    and exact columns), then the k best of those once the first 1 / SHORTLIST_PARTIAL of their subspaces is added."""
    from hf_factor_embed.layers.factorized import SHORTLIST_PARTIAL, SHORTLIST_WIDEN

    full, head = _shortlist_head(shortlist=8)
    hidden = torch.randn(3, full.embedding_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        coarse = (
            hidden @ full.basis.T @ full.weight.T + hidden[:, full.tail_columns] @ full.tail_column_values.float().T
        )
        coarse[:, full.dense_index] = float("-inf")
        m, _, s = full.codebooks.shape
        first = m // SHORTLIST_PARTIAL
        assert first >= 1 and full.num_embeddings - full.num_dense_rows > SHORTLIST_WIDEN * 8  # both stages run
        rotated = (hidden @ full.tail_rotation.T).view(3, m, s)[:, :first]
        parts = torch.einsum(
            "nms,vms->nv", rotated, full.codebooks[torch.arange(first), full.tail_codes[:, :first].long()]
        )
        expected = []
        for row in range(3):
            listed = coarse[row].topk(SHORTLIST_WIDEN * 8).indices
            expected.append(set(listed[(coarse[row, listed] + parts[row, listed]).topk(8).indices].tolist()))
        tail = head(hidden).isfinite()
        tail[:, full.dense_index] = False
    assert [set(row.nonzero().flatten().tolist()) for row in tail] == expected


def test_shortlist_as_long_as_the_tail_is_the_full_head():
    full, head = _shortlist_head(shortlist=10**6)
    hidden = torch.randn(4, 1, full.embedding_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(head(hidden), full(hidden))


@pytest.mark.parametrize("format", ["onnx", "executorch"])
def test_shortlist_head_exports_and_decodes_like_transformers(format, tmp_path, capsys):
    """The file reads the codes of k listed tokens (TopK, then GatherElements of m x k), and its greedy tokens are
    the full head's on the checked prompts; from the command line as from Python."""
    if format == "executorch":
        pytest.importorskip("executorch.runtime")
    from test_product_tail import pq_model

    folder = tmp_path / "ckpt"
    model = pq_model()
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    main(["export", str(folder), "--out", str(tmp_path / format), "--format", format, "--head", "shortlist:64"])

    report = json.loads((tmp_path / format / "export.json").read_text())
    assert report["identical"] and report["head"] == "shortlist:64"
    assert "head shortlist:64" in capsys.readouterr().out
    if format == "onnx":
        # the band's rows read the band: the file holds the tail's codes only, this (float) checkpoint every row's
        assert report["embedding_bytes"] < report["checkpoint_embedding_bytes"]
        graph = onnx.load(report["file"]).graph
        ops = [n.op_type for n in graph.node]
        assert {"TopK", "GatherElements"} <= set(ops) and ops.count("TopK") == 2  # the two stages
        # each stage's codes are cast to int32 indices, not int64 (ONNX Runtime gathers by int32 faster)
        casts = {n.output[0]: n.attribute[0].i for n in graph.node if n.op_type == "Cast"}
        code_indices = [n.input[1] for n in graph.node if n.op_type == "GatherElements" and n.input[1] in casts]
        assert [casts[i] for i in code_indices] == [onnx.TensorProto.INT32] * 2
        (codes,) = [i for n, i in _initializers(report["file"]).items() if n.endswith("tail_codes")]
        layer = model.get_output_embeddings()
        assert codes.dims[0] == layer.num_embeddings - layer.num_dense_rows


def test_transformers_head_reads_the_same_shortlist_on_decode_steps():
    """use_shortlist: decode steps (few positions, no gradient) give the exported shortlist head's logits; many
    positions keep the full head; greedy generation with a list as long as the tail is the full head's."""
    from test_product_tail import pq_model

    model = pq_model()
    head = model.get_output_embeddings()
    hidden = torch.randn(2, 1, head.embedding_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = head(hidden)
        head.use_shortlist(8)
        listed, many = head(hidden), head(hidden.expand(2, 6, -1))
    _, exported = _shortlist_head(shortlist=8)
    torch.testing.assert_close(listed, exported(hidden))
    torch.testing.assert_close(many, full.expand(2, 6, -1))
    ids = torch.tensor([tiny_tokenizer()(PROMPTS[0]).input_ids])
    head.use_shortlist(None)
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)
    head.use_shortlist(10**6)
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.parametrize("shortlist", [0, -3])
def test_a_shortlist_needs_a_whole_number_of_tokens_and_a_coded_tail(shortlist):
    from test_product_tail import pq_model

    with pytest.raises(hfe.FactorEmbedError, match="whole number"):
        pq_model().get_output_embeddings().use_shortlist(shortlist)
    with pytest.raises(hfe.FactorEmbedError, match="low-rank tail"):
        hfe.patch_model(tiny_llama(), rank=8).get_output_embeddings().use_shortlist(16)


@pytest.mark.parametrize("positions", [1, 3])
def test_code_sums_in_eager_torch_equal_the_exported_gather_bit_for_bit(positions, monkeypatch):
    """transformers reads the listed codes by flat offsets, an exported graph by a gather along the centroids: the
    same sums, so the file's greedy tokens can be checked against transformers'."""
    from hf_factor_embed.layers import factorized

    generator = torch.Generator().manual_seed(0)
    tables = torch.randn(positions, 256, 40, generator=generator)[..., 8:]  # a stage's subspaces, as sliced
    codes = torch.randint(0, 256, (1000, 40), generator=generator).to(torch.uint8)
    rows = torch.randint(0, 1000, (positions, 77), generator=generator)
    eager = factorized._code_sum(tables, codes, rows, skip=8)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(eager, factorized._code_sum(tables, codes, rows, skip=8))
