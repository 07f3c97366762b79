"""The settings a user gives, as data: one frozen dataclass per group, each field's default, check and help once.

The command line builds its options from these fields (:func:`hf_factor_embed.cli.options.option`),
:func:`hf_factor_embed.pipeline.compress.compress` takes them as keyword arguments (:meth:`Settings.build`),
``patch_model`` checks its storage keywords with :class:`Storage`, and the recipes read the same defaults; as
PEFT's ``LoraConfig`` keeps each field's documentation in its metadata. A bad value is a
:class:`~hf_factor_embed.errors.FactorEmbedError` naming the setting (and its command-line flag) and what to give.

Imports nothing of the package but its errors: every layer may read it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

from .errors import FactorEmbedError

#: Bits the factors can be stored with as integers.
BITS = (8, 4)
#: What the rows outside the band are stored as.
TAILS = ("lowrank", "pq")


#: Settings whose command-line flag is not their name: what a user serves is ``--calibration`` there.
_FLAGS = {"serve": "--calibration"}


def flag(name: str) -> str:
    """The command-line flag of a setting: ``eval_tokens`` -> ``--eval-tokens``, ``serve`` -> ``--calibration``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _named(name: str, value) -> str:
    """How an error names a setting for both audiences: ``rank=0 (--rank)``."""
    return f"{name}={value!r} ({flag(name)})"


def is_whole(value) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> None:
    if value is not None and (not is_whole(value) or value < 1):
        raise FactorEmbedError(f"{_named(name, value)} must be a whole number above 0")


#: The fewest tokens a perplexity window can hold and still say something.
MIN_WINDOW = 16


def check_window(name: str, value) -> None:
    """Tokens to measure: a whole number of at least :data:`MIN_WINDOW`."""
    if value is not None and (not is_whole(value) or value < MIN_WINDOW):
        raise FactorEmbedError(f"{_named(name, value)} must be a whole number of at least {MIN_WINDOW} tokens")


def check_share(name: str, value) -> None:
    """A share strictly between 0 and 1."""
    if value is not None and (not is_number(value) or not 0 < value < 1):
        raise FactorEmbedError(f"{_named(name, value)} must be a share strictly between 0 and 1 (e.g. 0.2)")


def check_target(name: str, value) -> None:
    """A perplexity ratio to dense: a finite number >= 1."""
    if value is None:
        return
    if not is_number(value) or not math.isfinite(value) or value < 1:
        raise FactorEmbedError(f"{_named(name, value)} is a perplexity ratio to the dense model: a number >= 1")


def check_kld(name: str, value) -> None:
    """A KL divergence from the dense model, in nats: a finite number > 0."""
    if value is None:
        return
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise FactorEmbedError(
            f"{_named(name, value)} is a KL divergence from the dense model: a number > 0 (e.g. 0.01)"
        )


def check_bits(bits, group_size=None) -> None:
    """``bits`` in :data:`BITS` (or None: float factors); a group size is even and needs bits."""
    if bits is not None and (isinstance(bits, bool) or bits not in BITS):
        raise FactorEmbedError(f"bits={bits!r} is not supported; use one of {BITS} (or None for float factors)")
    if group_size is not None and (bits is None or not is_whole(group_size) or group_size < 2 or group_size % 2):
        raise FactorEmbedError(f"group_size={group_size!r} needs bits and an even size >= 2 (e.g. 32), or None")


def default_group(bits: int, group_size: int | None) -> int | None:
    """Per row (None) for 8 bits, groups of 32 for 4 bits, unless told otherwise."""
    return group_size if group_size is not None else (None if bits == 8 else 32)


def check_band_share(name: str, value) -> None:
    # 1 would leave the band no rows once the tail takes its share of the size: not even the special tokens
    if not is_number(value) or not 0 <= value < 1:
        raise FactorEmbedError(
            f"{_named(name, value)} is the share of the size spent on exact rows: give a number in [0, 1) (e.g. 0.3)"
        )


def _check_tail(name: str, value) -> None:
    if value is not None and value not in TAILS:
        raise FactorEmbedError(f"{_named(name, value)} is not one of {', '.join(TAILS)}")


def _check_names(name: str, value) -> None:
    if value is not None and (
        isinstance(value, (str, bytes, os.PathLike)) or not all(isinstance(v, (str, os.PathLike)) and v for v in value)
    ):
        raise FactorEmbedError(f"{_named(name, value)}: give a list of source names (e.g. ['pydoc', 'lang:de'])")


def setting(default, help: str, check: Callable[[str, object], None] | None = None):
    """A dataclass field whose metadata holds its help text and its check."""
    return field(default=default, metadata={"help": help, "check": check})


class _Checked:
    """Runs every field's check at construction: a settings object is valid or does not exist."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name))


@dataclass(frozen=True)
class Sources(_Checked):
    """What the model serves and what is measured."""

    serve: tuple[str, ...] | None = setting(
        None,
        "What the model serves, one source per option (repeat it): a text file, a local kind of text (pydoc, "
        "licenses, changelogs, messages), a language (lang:de, lang:zh_CN, ...) or generated (English as the model "
        "writes it, sampled once it loads; generated:<tokens> for a size). Each is held back in part and "
        "measured; the band covers every source's tokens.",
        _check_names,
    )
    measure: tuple[str, ...] | None = setting(
        None,
        "Sources not served, measured to show what was given up (repeat it; default with served sources: the local "
        "English kinds and a few languages not served; 'none' for none).",
        _check_names,
    )
    held_back: float = setting(0.2, "Share of each served source held back to measure.", check_share)
    calibration_tokens: int = setting(
        32768, "Tokens of each source the model reads to calibrate (all are counted).", check_positive_int
    )
    eval_tokens: int = setting(2048, "Tokens of each measured text (512-token windows).", check_window)
    peers: bool = setting(False, "Also measure int8 / int6 / int4 quantization of the dense embedding.")


@dataclass(frozen=True)
class Size(_Checked):
    """How large the factorized embedding is: give one (with served sources and none: the plan at 8%)."""

    rank: int | None = setting(None, "The rank r of the factors.", check_positive_int)
    budget: float | None = setting(None, "Instead of --rank: share of parameters kept (0-1).", check_share)
    target: float | None = setting(
        None,
        "Instead of --rank: largest perplexity ratio to dense, e.g. 1.02. With served sources, the plan searches "
        "the smallest budget at which every served source's held-back part stays within it; otherwise the rank is "
        "searched.",
        check_target,
    )
    target_kld: float | None = setting(
        None,
        "Instead of --rank, with served sources: largest mean KL divergence from dense's next-token distributions "
        "(nats, e.g. 0.01) on every served source's held-back part; the plan searches the smallest budget that "
        "keeps it.",
        check_kld,
    )
    max_bytes: str | None = setting(
        None,
        "Instead of --rank: a byte budget for the embedding as stored, a share of its fp32 bytes (0.08) or a size "
        "(40MB). Candidates (band size, tail format) are measured on the served sources' held-back parts and the "
        "best kept. The default with served sources: 0.08.",
    )


#: The byte budget the plan spends when served sources are given and no size is (8% of the fp32 bytes).
DEFAULT_MAX_BYTES = "0.08"


def _check_storage_bits(name: str, value) -> None:
    try:
        check_bits(value)
    except FactorEmbedError:
        raise FactorEmbedError(f"{_named(name, value)} is not supported; use one of {BITS}") from None


@dataclass(frozen=True)
class Storage(_Checked):
    """How the factors are stored: float, or integers with fp16 scales."""

    bits: int | None = setting(
        None, "Store the codes A as 8- or 4-bit integers with fp16 scales (4 with --max-bytes).", _check_storage_bits
    )
    group_size: int | None = setting(None, "With --bits: columns per scale of A (default: per row for 8, 32 for 4).")
    band_bits: int | None = setting(
        None, "With --bits: bits of the basis B and the band's rows (default 8).", _check_storage_bits
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, self.group_size)
        if self.band_bits is not None and self.bits is None:
            raise FactorEmbedError("band_bits (--band-bits) needs bits (--bits), the codes' precision; give both")


@dataclass(frozen=True)
class Tail(_Checked):
    """The banded method's shape with ``--rank``: how much of the size is exact rows, and what the rest is."""

    band_share: float = setting(
        0.3,
        "banded: share of the size spent on exact rows (the plan, --max-bytes, picks its band itself).",
        check_band_share,
    )
    tail: str | None = setting(
        None,
        "banded: the rows outside the band as lowrank (default) or pq (product codes: every token keeps a row of "
        "its own, one byte per --tail-sub-dim values).",
        _check_tail,
    )
    tail_sub_dim: int | None = setting(None, "--tail pq: values per code byte (default 8).", check_positive_int)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tail_sub_dim is not None and self.tail != "pq":
            raise FactorEmbedError("tail_sub_dim (--tail-sub-dim) is a setting of the product-coded tail: add tail pq")

    @property
    def given(self) -> dict:
        """The settings that differ from the defaults (what a user chose)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


#: The product-coded tail's values per code byte where ``tail_sub_dim`` is not given.
DEFAULT_TAIL_SUB_DIM = 8

GROUPS = (Sources, Size, Storage, Tail)


@dataclass(frozen=True)
class Settings:
    """Every group, as ``compress`` takes them."""

    sources: Sources = field(default_factory=Sources)
    size: Size = field(default_factory=Size)
    storage: Storage = field(default_factory=Storage)
    tail: Tail = field(default_factory=Tail)

    @classmethod
    def build(cls, **values) -> Settings:
        """Settings from keyword arguments named as the fields (``rank=160, bits=4``); an unknown name is refused
        with the known ones."""
        known = {f.name: group for group in GROUPS for f in fields(group)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise FactorEmbedError(f"unknown settings {unknown}; known: {sorted(known)}")
        parts = {group: {} for group in GROUPS}
        for name, value in values.items():
            if isinstance(value, list):
                value = tuple(value)
            parts[known[name]][name] = value
        return cls(*(group(**parts[group]) for group in GROUPS))


def setting_field(name: str):
    """The dataclass field of the setting ``name`` (its default and its help), in whichever group holds it."""
    for group in GROUPS:
        for f in fields(group):
            if f.name == name:
                return f
    raise KeyError(name)


def default(name: str):
    f = setting_field(name)
    return None if f.default is MISSING else f.default
