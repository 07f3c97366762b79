"""Registry of factorization methods, one file each, behind ``patch_model(method=...)``."""

from __future__ import annotations

from ..errors import FactorEmbedError
from .activation import ActivationMethod, TiedJointMethod
from .banded import BandedMethod
from .base import FactorizationMethod, FactorizationTask, Factors
from .frequency import FrequencyMethod
from .svd import SVDMethod

_METHODS: dict[str, FactorizationMethod] = {}


def register_method(method: FactorizationMethod | type[FactorizationMethod]) -> None:
    instance = method() if isinstance(method, type) else method
    _METHODS[instance.name] = instance


def get_method(name: str | FactorizationMethod) -> FactorizationMethod:
    """The registered method called ``name``; a method instance (e.g. ``BandedMethod(band_share=0.9)``) as is."""
    if isinstance(name, FactorizationMethod):
        return name
    try:
        return _METHODS[name]
    except KeyError:
        raise FactorEmbedError(f"unknown factorization method {name!r}; known: {', '.join(sorted(_METHODS))}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


for _method in (SVDMethod, FrequencyMethod, ActivationMethod, TiedJointMethod, BandedMethod):
    register_method(_method)

__all__ = ["FactorizationMethod", "FactorizationTask", "Factors", "available_methods", "get_method", "register_method"]
