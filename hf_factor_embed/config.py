"""The configuration of a factorized model; it is also what ``config.json`` stores as ``quantization_config``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .errors import CheckpointError, FactorEmbedError
from .options import check_bits, default_group

#: The ``quant_method`` written into config.json. transformers prints it in its warning when a Python without
#: this plugin meets such a checkpoint, so it names the package to install and import.
QUANT_METHOD = "hf_factor_embed"
FORMAT_VERSION = 1

#: The embedding roles a model can have factorized. ``input`` and ``output`` are found through
#: ``get_input_embeddings`` / ``get_output_embeddings``; the others through the architecture's adapter.
INPUT, OUTPUT = "input", "output"


@dataclass
class FactorEmbedConfig(QuantizationConfigMixin):
    """How a model's embeddings are factorized.

    Args:
        rank: the rank asked for (``None`` when it came from ``budget``).
        budget: the share of each factorized matrix's parameters kept (0 < budget < 1), used when ``rank`` is None.
        method: the factorization method that picked the factors (informational once saved).
        modules: role -> ``{"rank", "num_embeddings", "embedding_dim"}`` for each factorized module; roles are
            ``"input"``, ``"output"`` and the adapter's extra embeddings (``"position"``, ``"token_type"``).
        tied: whether the output head shares the input embedding's factors.
        bits: 8 or 4 when the factors are stored as integers with fp16 scales
        (:mod:`hf_factor_embed.quantizer.rounding`);
            None for float factors.
        group_size: the columns sharing one scale of A; None: one scale per row.
        band_bits: the bits of the basis B and of the band's rows (one scale per row for 8 bits); None: as
            ``bits`` (checkpoints written before this field). ``patch_model`` writes 8 (see its docstring).
        band_group_size: the columns sharing one scale of B and of the band's rows; None: one per row for 8 bits,
            32 for 4 (checkpoints written before this field). ``patch_model`` writes 64 for 8-bit bands.
        tail_column_bits: 8 when a product-coded tail's exact outlier columns are stored as int8 with one fp16
            scale per row; None: fp16 (checkpoints written before this field). ``patch_model`` writes 8.
        tail_skips_band: whether a product-coded tail's codes and columns are stored for the rows outside the band
            only (the band's rows never read them); False: for every row (checkpoints written before this field).
            ``patch_model`` writes True with ``bits``.
    """

    rank: int | None = None
    budget: float | None = None
    method: str = "svd"
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    tied: bool = False
    bits: int | None = None
    group_size: int | None = None
    band_bits: int | None = None
    band_group_size: int | None = None
    tail_column_bits: int | None = None
    tail_skips_band: bool = False
    format_version: int = FORMAT_VERSION
    quant_method: str = QUANT_METHOD

    def __post_init__(self) -> None:
        if self.quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method must be {QUANT_METHOD!r}, got {self.quant_method!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"this checkpoint uses hf_factor_embed format {self.format_version}, newer than this installed "
                f"version understands ({FORMAT_VERSION}); upgrade hf-factor-embed."
            )
        try:
            check_bits(self.bits, self.group_size)
            if self.band_bits is not None:
                check_bits(self.band_bits, self.band_group_size)
            if self.tail_column_bits not in (None, 8):
                raise FactorEmbedError(f"tail_column_bits={self.tail_column_bits} is not supported (8 or None)")
        except FactorEmbedError as error:
            raise CheckpointError(f"quantization_config in config.json: {error} (an edited config.json?)") from None
        for role, spec in self.modules.items():
            missing = {"rank", "num_embeddings", "embedding_dim"} - set(spec)
            if missing:
                raise ValueError(f"quantization_config.modules[{role!r}] lacks {sorted(missing)}: edited config.json?")

    def precision(self, tensor: str) -> tuple[int, int | None]:
        """(bits, group size) that ``tensor`` (``weight``, ``basis``, ``dense_rows`` or ``tail_column_values``) is
        stored with."""
        if tensor == "tail_column_values":
            return self.tail_column_bits, None
        if tensor == "weight" or (self.band_bits in (None, self.bits) and self.band_group_size is None):
            return self.bits, self.group_size
        bits = self.band_bits or self.bits
        return bits, default_group(bits, self.band_group_size)

    def set_storage(self, bits: int | None, group_size: int | None = None, band_bits: int | None = None):
        """The precisions ``patch_model`` stores the factors with (nothing for float factors); the plan counts bytes
        with the same settings. Returns the config."""
        if bits is not None:
            self.bits, self.group_size = bits, default_group(bits, group_size)
            self.band_bits = 8 if band_bits is None else band_bits
            # groups of 64 on the band: one scale per row costs Gemma-3's embedding 3% perplexity on English text,
            # groups of 64 nothing (benchmarks/vocab.py, peers "int8" and "int8 g64"), for 3% more bytes on the band
            self.band_group_size = 64 if self.band_bits == 8 else None
            # read only where the tail is product-coded (rounding.TAIL_COLUMN_TENSOR, rounding.BAND_SKIPPING_TENSORS)
            self.tail_column_bits, self.tail_skips_band = 8, True
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    @property
    def is_trainable(self) -> bool:  # read by some transformers/peft code paths on the config
        return True
