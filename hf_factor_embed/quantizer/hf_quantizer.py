"""The transformers integration: a registered quantization config and ``HfQuantizer``, and the marks it leaves on a
model (:func:`attach` / :func:`detach`).

``from_pretrained`` reads ``quantization_config`` from config.json, finds ``quant_method="hf_factor_embed"``
registered here, and calls :meth:`FactorEmbedHfQuantizer._process_model_before_weight_loading` on the model
skeleton (meta device). That hook swaps the factorized layers in, so the factors in the checkpoint load straight
into them and tying is restored by transformers itself. Nothing is quantized; "quantizer" is only the hook's name.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from ..adapters import get_adapter
from ..config import QUANT_METHOD, FactorEmbedConfig
from ..errors import CheckpointError
from ..lazy import pretrained_model_class as _pretrained_model_class
from .marker import check_complete
from .model_methods import GIVEN_STATE_DICT, OVERRIDDEN, install_methods
from .rounding import stored_tensors
from .storage import add_placeholders, quantized_state_dict, restore_from_placeholders
from .structure import factorized_layers, install_layers

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel


class FactorEmbedHfQuantizer(HfQuantizer):
    """Rebuilds factorized embeddings before the weights of a factorized checkpoint load."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        config = self.quantization_config
        if checkpoint_files:
            check_complete(Path(checkpoint_files[0]).parent, "the checkpoint")
        if not config.modules:
            raise CheckpointError(
                "config.json's quantization_config (hf_factor_embed) names no factorized modules, so nothing would "
                "be rebuilt and the embeddings would load random: an edited or damaged config.json; restore it or "
                "save the model again"
            )
        layers = install_layers(model, get_adapter(model), config)
        if config.bits:  # integer factors: placeholders to read them into; the float keys are not in the file
            expected_missing = add_placeholders(model, config)
            model._keys_to_ignore_on_load_missing = {*(model._keys_to_ignore_on_load_missing or ()), *expected_missing}
            self._tie_warning_filter = _ExpectedAbsentTies(factorized_layers(model))
            _modeling_logger().addFilter(self._tie_warning_filter)
        if checkpoint_files:
            _check_checkpoint(model, layers, checkpoint_files, skip=stored_tensors(config))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        _modeling_logger().removeFilter(getattr(self, "_tie_warning_filter", None))
        layers = factorized_layers(model)
        for name, layer in layers.items():  # before the integers are read back through the band's ids
            check_band_index(name, layer)
        if self.quantization_config.bits:
            restore_from_placeholders(model, self.quantization_config)
        # read from integers whose scales were checked: finite by construction (a full pass each cost 10-40 ms)
        checked = {id(getattr(layer, n)) for layer in layers.values() for n in stored_tensors(self.quantization_config)}
        for name, layer in layers.items():
            check_finite_factors(name, layer, checked)
            check_tail_codes(name, layer, checked)
            layer.use_head_layout()  # loading replaced the factors' storage with row-major copies
        install_methods(model)
        return model

    def get_state_dict_and_metadata(self, model):
        """What ``save_pretrained`` writes: the state dict it was given (transformers replaces that with this
        hook's answer for any quantized model, so :mod:`.model_methods` hands it over as ``GIVEN_STATE_DICT``;
        Accelerate's FSDP save passes the gathered full state dict that way), with ``bits`` as integers and scales."""
        given = getattr(model, GIVEN_STATE_DICT, None)
        if self.quantization_config.bits:
            return quantized_state_dict(model, self.quantization_config, given), {}
        return given, {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # The factors are ordinary float Parameters: Trainer may train them directly, no adapter needed.
        return True

    @property
    def is_compileable(self) -> bool:
        return True


class _ExpectedAbsentTies(logging.Filter):
    """Drops transformers' "This checkpoint seem corrupted ... both are absent" for the float factors of integer
    checkpoints: they are absent by design, rebuilt from ``<name>_q`` / ``<name>_scale`` and tied right after."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = tuple(f" {module}." for module in layers)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("seem corrupted" in message and any(name in message for name in self.names))


def _modeling_logger() -> logging.Logger:
    return logging.getLogger("transformers.modeling_utils")


def attach(model: PreTrainedModel, config: FactorEmbedConfig) -> None:
    """Mark ``model`` as factorized the way transformers marks a quantized model after ``from_pretrained``."""
    model.config.quantization_config = config
    model.hf_quantizer = FactorEmbedHfQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    install_methods(model)


def detach(model: PreTrainedModel) -> None:
    """Forget everything :func:`attach` set: the model is a plain dense model again."""
    for name in ("hf_quantizer", "quantization_method", "factor_embed_report", *OVERRIDDEN):
        model.__dict__.pop(name, None)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for module in model.modules():
        if isinstance(module, _pretrained_model_class()):
            module.config.__dict__.pop("_is_quantized", None)


def give_own_config(model: PreTrainedModel) -> None:
    """Give ``model`` (and every sub-model reading it) a copy of its config before :func:`attach` writes to it.

    ``Model.from_config(cfg)`` and ``Model(cfg)`` keep ``cfg`` itself; were it marked factorized in place, a second
    model built from ``cfg`` would be refused as factorized and ``from_pretrained(..., config=cfg)`` would take
    the factorized load path.
    """
    memo: dict[int, object] = {}
    own = copy.deepcopy(model.config, memo)
    for module in model.modules():
        if isinstance(module, _pretrained_model_class()):
            module.config = own if module.config is model.config else memo.get(id(module.config), module.config)


def _check_checkpoint(model, layers, checkpoint_files, skip: tuple[str, ...] = ()) -> None:
    """Every factor the config promises is in the checkpoint with the right shape, and the files are whole.

    transformers would only warn about a missing factor and leave it uninitialised; we refuse instead.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for file in checkpoint_files:
        if not str(file).endswith(".safetensors"):
            raise CheckpointError(f"{file}: hf_factor_embed checkpoints are safetensors only")
        try:
            with safe_open(file, framework="pt") as reader:
                for key in reader.keys():
                    shapes[key] = tuple(reader.get_slice(key).get_shape())
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise CheckpointError(f"{file} is damaged or truncated ({exc}); save the model again") from exc
        size = Path(file).stat().st_size
        _check_file_length(file, size)
    shapes = _as_loaded(model, shapes)
    tied_targets = set(model.all_tied_weights_keys)
    for module_name, layer in ((n, m) for n, m in model.named_modules() if m in layers.values()):
        for param_name, param in layer.named_parameters(recurse=False):
            key = f"{module_name}.{param_name}"
            if key in tied_targets or param_name in skip:
                continue
            found = [k for k in shapes if k == key or k.endswith("." + key) or key.endswith("." + k)]
            if not found:
                raise CheckpointError(
                    f"the checkpoint has no tensor for {key} ({tuple(param.shape)}), which its "
                    f"quantization_config promises: an incomplete or edited checkpoint; save the model again"
                )
            if shapes[found[0]] != tuple(param.shape):
                raise CheckpointError(
                    f"{found[0]} has shape {shapes[found[0]]} in the checkpoint but config.json's "
                    f"quantization_config says {tuple(param.shape)}: the config and the weights disagree"
                )


def check_band_index(name: str, layer) -> None:
    """The band's token ids, as loaded, are valid: each inside the vocabulary, each once, in order (as saved). An
    edited id out of range would fail only at the first forward, with a bare IndexError; a repeated one would
    silently change logits."""
    index = getattr(layer, "dense_index", None)
    if index is None:
        return
    vocab = layer.num_embeddings  # the config's V: integer checkpoints' factors are placeholders until restored
    where = f"{name}.dense_index (the band's token ids)"
    outside = index[(index < 0) | (index >= vocab)]
    if outside.numel():
        raise CheckpointError(
            f"{where} holds {int(outside[0])}, outside the vocabulary 0..{vocab - 1}: an edited or damaged "
            "checkpoint; save the model again"
        )
    steps = index[1:] - index[:-1]
    if bool((steps <= 0).any()):
        at = int((steps <= 0).nonzero()[0]) + 1
        problem = "twice" if int(steps[at - 1]) == 0 else "out of order"
        raise CheckpointError(
            f"{where} holds id {int(index[at])} {problem}: an edited or damaged checkpoint; save the model again"
        )


def check_finite_factors(name: str, layer, checked: set[int]) -> None:
    """The factors and the band's rows are finite (integer checkpoints' scales are checked as they are read; a float
    checkpoint's values only here): a NaN would reach every logit of the tokens that read it. Tensors whose ``id``
    is in ``checked`` are skipped, and each one checked here joins it (a tied pair shares its tensors)."""
    for tensor_name in ("weight", "basis", "dense_rows"):
        _check_finite(name, tensor_name, getattr(layer, tensor_name, None), checked)


def _check_finite(name: str, tensor_name: str, tensor: torch.Tensor | None, checked: set[int]) -> None:
    if tensor is None or id(tensor) in checked:
        return
    checked.add(id(tensor))
    # in memory order: the head's column-major factors read across their strides take twice as long
    in_order = tensor.t() if tensor.dim() == 2 and not tensor.is_contiguous() else tensor
    if not bool(in_order.isfinite().all()):
        raise CheckpointError(f"{name}.{tensor_name} holds NaN or infinite values: save the model again")


def check_tail_codes(name: str, layer, checked: set[int]) -> None:
    """The tail's product codes, as loaded, index their codebooks (fewer than 256 centroids leave room for bad
    codes), and the codebooks and rotation are finite (``checked``: as :func:`check_finite_factors`)."""
    codes = getattr(layer, "tail_codes", None)
    if codes is None:
        return
    k = layer.codebooks.shape[1]
    if int(codes.max()) >= k:
        raise CheckpointError(
            f"{name}.tail_codes holds code {int(codes.max())} but its codebooks have {k} centroids: an edited or "
            "damaged checkpoint; save the model again"
        )
    columns, d = layer.tail_columns, layer.embedding_dim
    if columns.numel() and (
        int(columns.min()) < 0 or int(columns.max()) >= d or columns.unique().numel() < columns.numel()
    ):
        raise CheckpointError(
            f"{name}.tail_columns must name distinct coordinates in 0..{d - 1}: an edited or damaged checkpoint"
        )
    for tensor_name in ("codebooks", "tail_rotation", "tail_column_values"):
        _check_finite(name, tensor_name, getattr(layer, tensor_name), checked)


def _as_loaded(model, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """File key -> shape, re-keyed by the names the model will load them under.

    Some classes save under legacy names that transformers renames on load (GPT-NeoX writes its head, the module
    ``lm_head``, as ``embed_out``): the check must read the file as transformers does, or it misses the head.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    if not renamings:
        return shapes
    return {rename_source_key(key, renamings, [])[0]: shape for key, shape in shapes.items()}


def _check_file_length(file, size: int) -> None:
    """safetensors maps lazily, so a file cut short is only noticed on the first read past its end."""
    import json
    import struct

    with open(file, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{file} is truncated ({size} bytes, {8 + header_len + end} expected); save the model again"
        )


def register() -> None:
    """Register the config and the quantizer with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(FactorEmbedConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(FactorEmbedHfQuantizer)
    from .unclaimed import install

    install()
