"""Command-line options built from the settings' dataclasses (:mod:`hf_factor_embed.options`): each option's help
and default come from its field, so the command line, ``compress()`` and the recipes cannot drift apart."""

from __future__ import annotations

import typer

from ..options import default, setting_field


def option(name: str, *flags: str, **kwargs) -> typer.models.OptionInfo:
    """A typer option for the setting ``name`` (its help from the field; ``flags`` where the flag is not the
    field's name, e.g. ``--calibration`` for ``serve``)."""
    return typer.Option(*flags, help=setting_field(name).metadata["help"], **kwargs)


__all__ = ["default", "option"]
