"""Deferred imports of heavy transformers modules, so that ``import hf_factor_embed`` stays cheap."""

from __future__ import annotations


def pretrained_model_class() -> type:
    from transformers import PreTrainedModel

    return PreTrainedModel
