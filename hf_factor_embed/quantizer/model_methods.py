"""What a factorized model carries beyond its layers: its config, its quantizer, and two methods of its own.

``save_pretrained`` becomes atomic (a failed save leaves the directory as it was) and refuses a checkpoint that a
Python without this plugin could misread; ``resize_token_embeddings`` grows or shrinks the rows of A, keeping
tying. Both are set on the instance, so the model's class (and everything transformers knows of it) is unchanged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import INPUT, OUTPUT
from ..errors import FactorEmbedError
from ..layers.factorized import FactorizedLayer

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel

_WEIGHT_FILE_PREFIXES = ("model", "pytorch_model", "adapter_model")
#: Where ``save_pretrained`` leaves a ``state_dict=`` it was given, for the quantizer's save hook to find.
GIVEN_STATE_DICT = "_hf_factor_embed_state_dict"
#: The methods :func:`install_methods` sets on a factorized model instance.
OVERRIDDEN = ("save_pretrained", "resize_token_embeddings")


def install_methods(model: PreTrainedModel) -> None:
    model.save_pretrained = types.MethodType(atomic_save_pretrained, model)
    model.resize_token_embeddings = types.MethodType(resize_token_embeddings, model)


def check_saveable(model: PreTrainedModel) -> None:
    check_plain_body(model)
    for name, layer in model.named_modules():
        if isinstance(layer, FactorizedLayer) and layer.rank >= layer.embedding_dim:
            raise FactorEmbedError(
                f"{name} has rank {layer.rank} = its width d: its factor A has the dense shape, so the checkpoint "
                f"would load silently wrong in a Python without hf_factor_embed, and it stores more than the dense "
                f"matrix anyway. Save a smaller rank, or call hf_factor_embed.densify(model) and save a dense model."
            )


def check_plain_body(model: PreTrainedModel) -> None:
    """A body quantized in memory (torchao's ``quantize_`` swaps weights for tensor subclasses) cannot be saved: a
    checkpoint holds one ``quantization_config``, and this one is the factors'."""
    for name, parameter in model.named_parameters():
        if type(parameter) not in (torch.Tensor, torch.nn.Parameter):
            raise FactorEmbedError(
                f"{name} is quantized in memory ({type(parameter).__name__}) and a checkpoint holds one "
                "quantization_config, the factors': save the factorized model before quantizing its body, and "
                "quantize the body again after loading (torchao.quantize_ leaves the factorized layers alone), or "
                "ship it quantized with hf-factor-embed export --body int8|int4"
            )


def atomic_save_pretrained(self: PreTrainedModel, save_directory: str | os.PathLike, *args, **kwargs) -> None:
    """``PreTrainedModel.save_pretrained``, writing into a sibling staging directory first.

    Only once every file is written are they moved into ``save_directory`` (same filesystem: each move is an
    atomic rename), and weight files the new checkpoint no longer has (old shards) removed. A failure before
    that point leaves ``save_directory`` exactly as it was.
    """
    check_saveable(self)
    setattr(self, GIVEN_STATE_DICT, kwargs.get("state_dict"))
    try:
        _atomic_save(self, save_directory, *args, **kwargs)
    finally:
        delattr(self, GIVEN_STATE_DICT)


def _atomic_save(self: PreTrainedModel, save_directory: str | os.PathLike, *args, **kwargs) -> None:
    dense_save = type(self).save_pretrained
    if kwargs.get("push_to_hub"):  # transformers names the repo after the directory: keep its behaviour whole
        return dense_save(self, save_directory, *args, **kwargs)
    target = Path(save_directory)
    if target.is_file():
        raise FactorEmbedError(f"save_pretrained: {target} is a file, not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_saves(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-{os.getpid()}-", dir=target.parent))
    try:
        dense_save(self, staging, *args, **kwargs)
        target.mkdir(exist_ok=True)
        new_files = sorted(p.name for p in staging.iterdir())
        # config.json last: a reader never sees a new config beside old weights.
        for name in sorted(new_files, key=lambda n: n == "config.json"):
            os.replace(staging / name, target / name)
        for old in target.iterdir():
            if old.name not in new_files and old.is_file() and _is_weight_file(old.name):
                old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_saves(target: Path) -> None:
    """Staging folders of earlier saves to ``target`` whose process is gone (killed mid-save): never cleaned
    otherwise, they would pile up beside the checkpoint."""
    for folder in target.parent.glob(f".{target.name}.saving-*"):
        pid = folder.name.removeprefix(f".{target.name}.saving-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _is_weight_file(name: str) -> bool:
    return name.startswith(_WEIGHT_FILE_PREFIXES) and (
        name.endswith((".safetensors", ".bin")) or name.endswith((".safetensors.index.json", ".bin.index.json"))
    )


def resize_token_embeddings(
    self: PreTrainedModel,
    new_num_tokens: int | None = None,
    pad_to_multiple_of: int | None = None,
    mean_resizing: bool = True,
) -> nn.Module:
    """Resize the vocabulary: rows of A are added (or dropped); B, the basis, is unchanged; tying is kept.

    New rows start at the mean of the existing codes (``mean_resizing=True``, which keeps the next-token
    distribution nearly unchanged) or at N(0, initializer_range).
    """
    embedding = self.get_input_embeddings()
    if not isinstance(embedding, FactorizedLayer):
        return type(self).resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)
    if pad_to_multiple_of is not None:
        base = embedding.num_embeddings if new_num_tokens is None else new_num_tokens
        new_num_tokens = _round_up_to_multiple(base, pad_to_multiple_of)
    if new_num_tokens is None or new_num_tokens == embedding.num_embeddings:
        return embedding
    head = self.get_output_embeddings()
    tied = isinstance(head, FactorizedLayer) and head.weight is embedding.weight
    _resize_rows(self, embedding, new_num_tokens, mean_resizing)
    if isinstance(head, FactorizedLayer):
        if tied:
            head.tie_to(embedding)
        else:
            _resize_rows(self, head, new_num_tokens, mean_resizing)
        head.num_embeddings = head.out_features = new_num_tokens
        if head.bias is not None:
            old = head.bias.detach()
            bias = torch.zeros(new_num_tokens, dtype=old.dtype, device=old.device)
            n = min(old.shape[0], new_num_tokens)
            bias[:n] = old[:n]
            head.bias = nn.Parameter(bias, requires_grad=head.bias.requires_grad)
            self.set_output_embeddings(head)  # BERT keeps a second reference to the bias
    config = self.config.quantization_config
    for role, layer in ((INPUT, embedding), (OUTPUT, head)):
        if role in config.modules:
            config.modules[role]["num_embeddings"] = new_num_tokens
            if isinstance(layer, FactorizedLayer) and layer.dense_rows is not None:
                config.modules[role]["dense_rows"] = layer.num_dense_rows
    self.config.get_text_config().vocab_size = new_num_tokens
    self.vocab_size = new_num_tokens
    self.tie_weights()
    return embedding


def _round_up_to_multiple(n: int, multiple: int) -> int:
    if not isinstance(multiple, int) or multiple < 1:
        raise FactorEmbedError(f"pad_to_multiple_of={multiple!r} must be a positive integer")
    return -(-n // multiple) * multiple


def _resize_rows(model: PreTrainedModel, layer: FactorizedLayer, new_num_tokens: int, mean_resizing: bool) -> None:
    old = layer.weight.detach()
    rows = torch.empty(new_num_tokens, old.shape[1], dtype=old.dtype, device=old.device)
    n = min(old.shape[0], new_num_tokens)
    rows[:n] = old[:n]
    if new_num_tokens > n:
        if mean_resizing:
            rows[n:] = old.float().mean(dim=0).to(old.dtype)
        else:
            std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
            rows[n:].normal_(0.0, std)
    layer.weight = nn.Parameter(rows, requires_grad=layer.weight.requires_grad)
    layer.num_embeddings = new_num_tokens
    if layer.dense_index is not None and int(layer.dense_index.max()) >= new_num_tokens:
        keep = layer.dense_index < new_num_tokens
        layer.dense_index = nn.Parameter(layer.dense_index[keep], requires_grad=False)
        layer.dense_rows = nn.Parameter(layer.dense_rows.detach()[keep], requires_grad=layer.dense_rows.requires_grad)
    layer.use_head_layout()
    if getattr(layer, "padding_idx", None) is not None and layer.padding_idx >= new_num_tokens:
        layer.padding_idx = None
