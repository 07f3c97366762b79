"""What a user deploying the model compares, in ONNX Runtime or ExecuTorch on this CPU: every file measured in the
same run.

    python benchmarks/deploy.py --checkpoint out/gemma3-en --dense bundled:gemma3 --keep /tmp/deploy  # 16 min a rerun
    python benchmarks/deploy.py --checkpoint out/gemma3-en --dense bundled:gemma3 --rows ours-int4 int4
    python benchmarks/deploy.py --checkpoint out/gemma3-en --dense bundled:gemma3 --runtime executorch

``--runtime executorch`` measures ``.pte`` programs instead (:mod:`deploy_executorch`: the whole model quantized by
ExecuTorch's LLM export, ours by ``export --format executorch --body``), with the same measurements, the fp32
program as the reference. Its default rows (``EXECUTORCH_ROWS``; ``--rows`` picks any below): fp32, the whole
model int8 and int4, the int4 body with a dense embedding, ours with the int4 body and the full head (for its
quality: a shortlist file's logits are -inf off its list), and the shortlist head with the fp32 and int4 bodies
(what a user runs there: the full codes head decodes at a fraction of dense's speed in ExecuTorch).

Rows (each an ONNX file, written here in a scratch folder):

- ``fp32``: the dense model as trained;
- ``int8`` / ``int4``: the whole dense model quantized by ONNX Runtime's own tools, what a user would ship
  instead: the body's linears and the (tied) head as ``--body`` quantizes them (:mod:`hf_factor_embed.export.body`:
  ``quantize_dynamic`` int8 per channel / ``MatMulNBits`` int4 block 32), the embedding table by the same tools
  (``quantize_dynamic``'s Gather for int8; ``MatMulNBits``'s quantizer at block 32, ``GatherBlockQuantized``, for
  int4: it takes Gather at 4 bits only). The head and the embedding are two tables in the file (ONNX Runtime's
  quantizer does not tie them);
- ``body-int8`` / ``body-int4``: the dense file with only its body quantized (the embedding and head stay fp32):
  the same body as ours, with a dense embedding;
- ``ours-fp32`` / ``ours-int8`` / ``ours-int4``: ``hf-factor-embed export CKPT --body fp32|int8|int4``;
- ``shortlist-fp32`` / ``-int8`` / ``-int4``: the same with ``--head shortlist`` (:mod:`hf_factor_embed.export.head`:
  the band's and 8,192 tail tokens' logits, picked in two stages, the rest -inf). Its logits are a greedy head's,
  so its quality is its greedy continuations against the full-head file with the same body (perplexity and KL
  divergence are that file's).

Each file is measured in a fresh process (so peak memory is its own): its bytes; load (an ONNX Runtime session,
best of 3); prefill tokens/s (a 128-token prompt of held-back pydoc text, ``<bos>`` first) and decode tokens/s (32
greedy tokens after it), best of 3; peak resident memory (after load, prefill and decode, before the quality
passes); then the file itself on text, as the model sees it (``<bos>`` first, one window of 128 tokens a text,
teacher-forced through the cache: the graph returns the last position's logits): perplexity, and KL divergence
from the ``fp32`` file's next-token distributions with the share of positions whose top token is its (as
llama.cpp's ``--kl-divergence`` reports them); and greedy continuations (32 tokens) of the generation benchmark's
12 English prompts, against the ``fp32`` file's.

Texts: served English held back (the first 20% of pydoc_data.topics, which compress holds back), English never
calibrated on (/usr/share/common-licenses), three languages not served (gettext catalogs: de, ru, zh_CN).
Writes ``benchmarks/results/deploy_<checkpoint name>.json`` (``deploy_executorch_...`` for ExecuTorch).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
BODIES = ("fp32", "int8", "int4")
ROWS = (
    "fp32", "int8", "int4", "body-int8", "body-int4",
    *(f"{kind}-{body}" for kind in ("ours", "shortlist") for body in BODIES),
)  # fmt: skip
EXECUTORCH_ROWS = ("fp32", "int8", "int4", "body-int4", "ours-int4", "shortlist-fp32", "shortlist-int4")
TEXTS = {"pydoc (served, held back)": "pydoc", "licenses (never seen)": "licenses"}
LANGUAGES = ("de", "ru", "zh_CN")
PREFILL, WINDOW, NEW_TOKENS = 128, 128, 32


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a factorized checkpoint folder")
    parser.add_argument("--dense", required=True, help="its dense model: a folder or bundled:NAME")
    parser.add_argument("--runtime", choices=("onnx", "executorch"), default="onnx")
    parser.add_argument("--rows", nargs="+", choices=ROWS, help="rows to measure (fp32 always); default: every row")
    parser.add_argument(
        "--keep", type=Path, help="write the files here (kept) instead of a scratch folder; where they are, reuse them"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # a child process: one file
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(args.measure, args.inputs)))
        return {}
    from hf_factor_embed.models.names import check_model_name

    if not (args.checkpoint / "config.json").is_file():
        sys.exit(f"deploy.py: error: no checkpoint at {args.checkpoint}")
    check_model_name(args.dense, "--dense model")
    chosen = args.rows or (EXECUTORCH_ROWS if args.runtime == "executorch" else ROWS)
    rows = ["fp32", *[r for r in chosen if r != "fp32"]]
    result = {"command": "python benchmarks/deploy.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    result["runtime"] = args.runtime
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        started = time.perf_counter()
        if args.runtime == "executorch":
            from deploy_executorch import write_programs

            folder = folder / "executorch"
            files = write_programs(args.checkpoint, args.dense, rows, folder)
        else:
            files = _write_files(args.checkpoint, args.dense, rows, folder)
        result["export_seconds"] = time.perf_counter() - started
        inputs = _inputs(args.checkpoint, folder)
        result["rows"] = {}
        for name in rows:
            result["rows"][name] = _child(files[name], inputs)
            print(f"{name}: {json.dumps(_summary(result['rows'][name]))}", flush=True)
    _compare(result["rows"])
    print(render(args.checkpoint.name, result))
    RESULTS.mkdir(exist_ok=True)
    prefix = "deploy_executorch_" if args.runtime == "executorch" else "deploy_"
    (RESULTS / f"{prefix}{args.checkpoint.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _write_files(checkpoint: Path, dense_name: str, rows: list[str], folder: Path) -> dict[str, Path]:
    """Each row's ONNX file: the dense one exported once and quantized per row; ours exported by the product. A
    file already in ``folder`` (``--keep`` of an earlier run) is measured again as it is."""
    from hf_factor_embed.export import export
    from hf_factor_embed.export.body import quantize_onnx_body
    from hf_factor_embed.export.onnx import MODEL_FILE, export_onnx
    from hf_factor_embed.models.load import load_model

    files = {row: folder / row / MODEL_FILE for row in ROWS}
    if not files["fp32"].is_file():
        dense, _ = load_model(dense_name)
        export_onnx(dense, _mkdir(folder / "fp32"))
        del dense
    for kind, head in (("ours", "full"), ("shortlist", "shortlist")):
        if any(r.startswith(kind + "-") for r in rows) and not files[f"{kind}-fp32"].is_file():
            if (folder / f"{kind}-fp32").exists():
                shutil.rmtree(folder / f"{kind}-fp32")
            export(checkpoint, folder / f"{kind}-fp32", head=head)
    for row in rows:
        if files[row].is_file():
            continue
        body = row.rsplit("-", 1)[-1]
        if row in ("int8", "int4"):
            _whole_model(files["fp32"], body, _mkdir(folder / row))
        else:  # "body-*": the dense file with its body quantized; ours: what `export --body` does after its check
            source = files["fp32" if row.startswith("body-") else row.split("-")[0] + "-fp32"]
            shutil.copy2(source, _mkdir(folder / row) / MODEL_FILE)
            quantize_onnx_body(files[row], body)
    return {row: files[row] for row in rows}


def _whole_model(fp32_file: Path, body: str, out: Path) -> Path:
    """The dense file quantized whole by ONNX Runtime's tools: body and head as ``--body`` does, the embedding
    table by ``MatMulNBits``'s quantizer (``GatherBlockQuantized``) at the same bits, block 32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from hf_factor_embed.export.body import INT4_BLOCK, quantize_onnx_body

    path = out / fp32_file.name
    model = onnx.load(str(fp32_file))
    _fold_head_transpose(model)  # the quantizers need the head's weight as an initializer, not Transpose(table)
    onnx.save(model, str(path))
    quantize_onnx_body(path, body)
    if body == "int8":  # MatMulNBits's quantizer takes Gather at 4 bits only: its int8 scheme, on the table
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(path)).graph
        sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
        table = max((n for n in graph.node if n.op_type == "Gather"), key=lambda n: sizes.get(n.input[0], 0)).name
        quantize_dynamic(
            path, path, op_types_to_quantize=["Gather"], nodes_to_quantize=[table], weight_type=QuantType.QInt8,
            per_channel=True,
        )  # fmt: skip
        return path
    config = DefaultWeightOnlyQuantConfig(
        block_size=INT4_BLOCK, is_symmetric=False, bits=int(body[3:]), op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )  # fmt: skip
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    return path


def _fold_head_transpose(model) -> None:
    """A MatMul reading ``Transpose(initializer)`` reads a transposed copy of it instead."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        transpose = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        table = numpy_helper.to_array(initializers[transpose.input[0]])
        folded = numpy_helper.from_array(np.ascontiguousarray(table.T), name=transpose.input[0] + "_transposed")
        model.graph.initializer.append(folded)
        node.input[1] = folded.name
    used = {i for n in model.graph.node for i in n.input}
    for node in [n for n in model.graph.node if n.op_type == "Transpose" and n.output[0] not in used]:
        model.graph.node.remove(node)


def _inputs(checkpoint: Path, folder: Path) -> Path:
    """The token ids every child feeds: the prompt, each text's window, the English prompts."""
    from transformers import AutoTokenizer

    from hf_factor_embed.calibration.model_text import bos_prefix
    from hf_factor_embed.calibration.sources import load_source

    sys.path.insert(0, str(Path(__file__).parent))
    from generation import PROMPTS

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    bos = bos_prefix(tokenizer)

    def ids(text: str, length: int) -> list[int]:
        return (([bos] if bos is not None else []) + tokenizer(text, add_special_tokens=False).input_ids)[:length]

    texts = {label: load_source(name).split(0.2)[1] for label, name in TEXTS.items()}
    texts |= {f"lang:{code} (not served)": load_source(f"lang:{code}").text for code in LANGUAGES}
    inputs = {
        "prompt": ids(load_source("pydoc").split(0.2)[1][-8000:], PREFILL),
        "windows": {label: ids(text, WINDOW) for label, text in texts.items()},
        "prompts": [tokenizer(p).input_ids for p in PROMPTS["english"]],
        "reference": str(_mkdir(folder / "fp32-logprobs")),
    }
    path = folder / "inputs.json"
    path.write_text(json.dumps(inputs))
    return path


def _child(path: Path, inputs: Path) -> dict:
    command = [sys.executable, __file__, "--checkpoint", ".", "--dense", ".", "--measure", str(path)]
    done = subprocess.run([*command, "--inputs", str(inputs)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"measuring {path} failed:\n{done.stderr[-3000:]}")
    return {"file_bytes": path.stat().st_size, **json.loads(done.stdout.strip().splitlines()[-1])}


def _measure(path: Path, inputs_file: Path) -> dict:
    """In a fresh process: speed and peak memory, then quality on the texts (the fp32 file writes the reference)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from deploy_executorch import executorch_speed
    from export import decoder_speed  # the export benchmark's measure: load, prefill and decode, best of 3

    inputs = json.loads(inputs_file.read_text())
    speed = executorch_speed if path.suffix == ".pte" else decoder_speed
    row, runtime = speed(path, np.array([inputs["prompt"]]))
    row["peak_rss_mb"] = _peak_rss_mb()
    row["greedy"] = [runtime.greedy(ids, NEW_TOKENS) for ids in inputs["prompts"]]
    row["texts"] = {}
    if path.parent.name.startswith("shortlist-"):  # -inf outside the list: a greedy head, judged by its tokens
        return row
    reference = Path(inputs["reference"])
    writes = not any(reference.iterdir())  # the first row (fp32) writes the reference the others read
    for index, (label, ids) in enumerate(inputs["windows"].items()):
        logprobs = _log_softmax(_teacher_forced(runtime, ids).astype(np.float64))
        stats = {
            "tokens": len(ids) - 1,
            "perplexity": float(np.exp(-logprobs[np.arange(len(ids) - 1), ids[1:]].mean())),
        }
        file = reference / f"{index}.npy"
        if writes:
            np.save(file, logprobs.astype(np.float32))
        else:
            dense = np.load(file).astype(np.float64)
            kld = np.maximum((np.exp(dense) * (dense - logprobs)).sum(-1), 0.0)  # rounding dips a hair below 0
            stats |= {"kld": float(kld.mean()), "kld_p99": float(np.quantile(kld, 0.99))}
            stats["same_top"] = float((dense.argmax(-1) == logprobs.argmax(-1)).mean())
        row["texts"][label] = stats
    return row


def _peak_rss_mb() -> float:
    """This process's peak resident memory since it started (``VmHWM``: getrusage's maximum would carry the parent's
    over from before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _teacher_forced(runtime, ids: list[int]) -> np.ndarray:
    """The file's logits after each prefix of ``ids`` but the whole: (len(ids) - 1, V). The graph returns the last
    position's logits (what decoding needs), so the text is decoded token by token through the cache."""
    logits, cache = runtime.step(np.array([ids[:1]]), runtime.empty_cache())
    rows = [logits[0]]
    for token in ids[1:-1]:
        logits, cache = runtime.step(np.array([[token]]), cache)
        rows.append(logits[0])
    return np.stack(rows)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _compare(rows: dict) -> None:
    """Greedy continuations against the fp32 file's: identical ones and the mean common prefix; a shortlist head's
    also against the full head's with the same body (``greedy_as_full``: identical continuations)."""
    from hf_factor_embed.measure.continuations import common_prefix

    dense = rows["fp32"]["greedy"]
    for name, row in rows.items():
        full = rows.get(name.replace("shortlist-", "ours-")) if name.startswith("shortlist-") else None
        if full is not None:
            row["greedy_as_full"] = sum(a == b for a, b in zip(row["greedy"], full["greedy"], strict=True))
    for row in rows.values():
        ours = row.pop("greedy")
        row["greedy_identical"] = sum(a == b for a, b in zip(ours, dense, strict=True))
        row["greedy_prefix"] = float(np.mean([common_prefix(a, b) for a, b in zip(ours, dense, strict=True)]))
        row["greedy_prompts"] = len(dense)


def _summary(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("greedy", "texts")}


def _mkdir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def render(name: str, result: dict) -> str:
    rows = result["rows"]
    labels = list(rows["fp32"]["texts"])
    lines = [
        f"{name}: {'ExecuTorch (XNNPACK)' if result.get('runtime') == 'executorch' else 'ONNX Runtime'}, this CPU; "
        f"perplexity / KL divergence from fp32 / same-top on {WINDOW}-token windows",
        f"{'file':<15}{'MB':>7}{'peak MB':>9}{'load s':>8}{'prefill':>9}{'decode':>8}{'greedy =':>10}  "
        + "  ".join(f"{label[:22]:>24}" for label in labels),
    ]
    for label, r in rows.items():
        quality = (
            []
            if r["texts"]
            else [
                f"greedy as the full head's: {r['greedy_as_full']}/{r['greedy_prompts']}"
                if "greedy_as_full" in r
                else "(no full-head file with its body in this run)"
            ]
        )
        for text in labels if r["texts"] else ():
            s = r["texts"][text]
            quality.append(
                f"{s['perplexity']:>8.2f}" + (f" {s['kld']:.3f} {s['same_top']:.1%}" if "kld" in s else " " * 15)
            )
        lines.append(
            f"{label:<15}{r['file_bytes'] / 1e6:>7.0f}{r['peak_rss_mb']:>9.0f}{r['load_s']:>8.2f}"
            f"{r['prefill_tok_s']:>9.1f}{r['decode_tok_s']:>8.1f}"
            f"{r['greedy_identical']:>4}/{r['greedy_prompts']} {r['greedy_prefix']:>4.1f}  " + "  ".join(quality)
        )
    lines.append("prefill / decode: tokens/s; greedy =: continuations identical to fp32's / mean common prefix")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
