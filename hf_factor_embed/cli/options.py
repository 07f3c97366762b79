"""Command-line options built from the settings' dataclasses (:mod:`hf_factor_embed.options`): each option's help
and default come from its field, so the command line, ``compress()`` and the recipes cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import typer

from ..options import default, setting_field


def option(name: str, *flags: str, **kwargs) -> typer.models.OptionInfo:
    """A typer option for the setting ``name`` (its help from the field; ``flags`` where the flag is not the
    field's name, e.g. ``--calibration`` for ``serve``)."""
    return typer.Option(*flags, help=setting_field(name).metadata["help"], **kwargs)


def output_path(out: str) -> Path:
    """``--out`` as a path; an empty one is refused (a Path of "" is ".", the current folder)."""
    from ..folders import check_out_named

    check_out_named(out)
    return Path(out)


__all__ = ["default", "option", "output_path"]
