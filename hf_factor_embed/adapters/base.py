"""The adapter interface: where one architecture keeps its token embedding, output head and other embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import nn

from ..config import INPUT, OUTPUT
from ..errors import UnsupportedModelError

if TYPE_CHECKING:  # transformers.modeling_utils is slow to import: hints only; runtime checks use .lazy
    from transformers import PreTrainedModel


class EmbeddingAdapter:
    """Finds and replaces a model's embeddings, always through the live model, never by fixed key names.

    Paths of extra embeddings are relative to ``model.base_model`` so that the same adapter serves the base
    model (``AutoModel``) and every head class built on it (``AutoModelForCausalLM`` ...).
    """

    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Other embeddings (role -> path under ``model.base_model``), left dense unless asked for by role.
    extra_embeddings: ClassVar[dict[str, str]] = {}

    @property
    def name(self) -> str:
        return type(self).__name__

    def input_embedding(self, model: PreTrainedModel) -> nn.Module:
        try:
            module = model.get_input_embeddings()
        except (NotImplementedError, AttributeError) as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} does not expose get_input_embeddings(); register an adapter for "
                f"model_type={model.config.model_type!r} with hf_factor_embed.register_adapter(...)."
            ) from exc
        if module is None or not hasattr(module, "weight") or module.weight.dim() != 2:
            raise UnsupportedModelError(
                f"{type(model).__name__}.get_input_embeddings() returned {type(module).__name__}, not a token "
                f"embedding table; register an adapter with hf_factor_embed.register_adapter(...)."
            )
        return module

    def output_head(self, model: PreTrainedModel) -> nn.Module | None:
        """The vocabulary projection, or None for a model without one (a base model, a classifier)."""
        try:
            return model.get_output_embeddings()
        except (NotImplementedError, AttributeError):
            return None

    def set_input_embedding(self, model: PreTrainedModel, module: nn.Module) -> None:
        model.set_input_embeddings(module)

    def set_output_head(self, model: PreTrainedModel, module: nn.Module) -> None:
        model.set_output_embeddings(module)

    def get(self, model: PreTrainedModel, role: str) -> nn.Module | None:
        """The module playing ``role`` in ``model``, or None where the model has none."""
        if role == INPUT:
            return self.input_embedding(model)
        if role == OUTPUT:
            return self.output_head(model)
        path = self._extra_path(model, role)
        try:
            return model.base_model.get_submodule(path)
        except AttributeError:
            return None

    def set(self, model: PreTrainedModel, role: str, module: nn.Module) -> None:
        if role == INPUT:
            self.set_input_embedding(model, module)
        elif role == OUTPUT:
            self.set_output_head(model, module)
        else:
            parent_path, _, attr = self._extra_path(model, role).rpartition(".")
            parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
            setattr(parent, attr, module)

    def roles(self, model: PreTrainedModel) -> list[str]:
        """Every role this model has a module for."""
        return [role for role in (INPUT, OUTPUT, *self.extra_embeddings) if self.get(model, role) is not None]

    def _extra_path(self, model: PreTrainedModel, role: str) -> str:
        if role not in self.extra_embeddings:
            known = [INPUT, OUTPUT, *self.extra_embeddings]
            raise UnsupportedModelError(
                f"{self.name} knows no embedding role {role!r} for {type(model).__name__}; known roles: {known}"
            )
        return self.extra_embeddings[role]
