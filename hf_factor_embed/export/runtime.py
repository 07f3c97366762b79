"""Greedy decoding of an exported decoder in ONNX Runtime: the check that the file does what transformers does."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxDecoder:
    """An ``InferenceSession`` over a file :func:`.onnx.export_onnx` wrote, with its cache carried between calls."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.session = _session(path, threads)
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]

    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past_inputs}

    def step(self, input_ids: np.ndarray, cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """(the last position's logits (batch, vocab), the cache after ``input_ids``)."""
        outputs = self.session.run(None, {"input_ids": input_ids.astype(np.int64), **cache})
        present = {i.name: value for i, value in zip(self.past_inputs, outputs[1:], strict=True)}
        return outputs[0][:, -1], present

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        """``new_tokens`` greedy tokens after ``prompt_ids`` (no stop at end-of-text: compared token for token)."""
        logits, cache = self.step(np.array([prompt_ids]), self.empty_cache())
        tokens = []
        for _ in range(new_tokens):
            tokens.append(int(logits[0].argmax()))
            if len(tokens) < new_tokens:
                logits, cache = self.step(np.array([[tokens[-1]]]), cache)
        return tokens


class OnnxEncoder:
    """An ``InferenceSession`` over an encoder's file: hidden states of tokenized text."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.session = _session(path, threads)

    def hidden_states(self, encoded) -> np.ndarray:
        """``encoded``: a tokenizer's output with ``return_tensors="np"``; returns (batch, length, hidden)."""
        feed = {name: np.asarray(encoded[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
        return self.session.run(None, feed)[0]


def _session(path: str | Path, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
