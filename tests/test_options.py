"""Each setting is declared once (hf_factor_embed.options): the command line, compress(), patch_model and the main
job's recipe read the same default and help, and a bad value is refused by the same check everywhere."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields

import pytest
import torch
from conftest import tiny_llama

from hf_factor_embed import FactorEmbedError, FactorizedEmbedding, FactorizedLMHead, patch_model
from hf_factor_embed.layers.layout import LayerLayout
from hf_factor_embed.options import GROUPS, Settings, Storage, Tail, default, flag, setting_field


def _compress_command():
    import typer

    from hf_factor_embed.cli import _register_commands, app

    _register_commands()
    group = typer.main.get_command(app)
    return group.commands["compress"]


def test_the_command_line_options_are_the_settings_fields():
    params = {p.name: p for p in _compress_command().params}
    params["serve"] = params.pop("calibration")  # --calibration names the served sources
    checked = 0
    for group in GROUPS:
        for f in fields(group):
            param = params[f.name]
            assert param.default == (list(f.default) if isinstance(f.default, tuple) else f.default), f.name
            assert param.help == f.metadata["help"], f.name
            checked += 1
    assert checked == 17


def test_patch_model_and_the_recipe_take_the_same_defaults():
    signature = inspect.signature(patch_model).parameters
    for name in ("bits", "group_size", "band_bits"):
        assert signature[name].default == default(name)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "compress_gemma3.py"
    spec = importlib.util.spec_from_file_location("compress_gemma3", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    parser_defaults = recipe.parser().parse_args([]).__dict__
    assert parser_defaults["band_share"] == default("band_share") == Tail().band_share
    from hf_factor_embed.factorize.banded import BandedMethod

    assert BandedMethod().band_share == default("band_share")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"band_share": 1.0}, r"band_share=1.0 \(--band-share\)"),
        ({"band_share": 0.99999}, None),
        ({"target": math.nan}, r"target=nan \(--target\)"),
        ({"target": math.inf}, r"target=inf"),
        ({"tail_sub_dim": 8}, "product-coded tail"),
        ({"tail": "vq"}, r"tail='vq' \(--tail\)"),
        ({"eval_tokens": True}, "whole number"),
        ({"serve": "pydoc"}, "a list of source names"),
        ({"band_bits": 8}, r"needs bits \(--bits\)"),
        ({"rankk": 8}, "unknown settings"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(settings, message):
    if message is None:
        Settings.build(**settings)
        return
    with pytest.raises(FactorEmbedError, match=message):
        Settings.build(**settings)


def test_every_setting_has_help_and_a_flag():
    for group in GROUPS:
        for f in fields(group):
            assert f.metadata["help"] and flag(f.name).startswith("--")
            assert setting_field(f.name) is f
    assert Storage(bits=4).bits == 4


@pytest.mark.parametrize("layout", [LayerLayout(320, 64, 8, 24), LayerLayout(320, 64, 4, 24, 8, 16, 4)])
def test_a_layer_holds_the_layout_it_was_built_from(layout):
    for cls in (FactorizedEmbedding, FactorizedLMHead):
        layer = cls.from_layout(layout)
        assert layer.layout == layout
        held = {name: tuple(t.shape) for name, t in layer.named_parameters() if name != "bias"}
        assert held == layout.shapes()
    assert LayerLayout.from_config(layout.as_config()) == layout


def test_the_config_stores_the_factors_layout():
    model = patch_model(tiny_llama(), rank=8, calibration=torch.arange(100, 140).repeat(20))
    layer = model.get_input_embeddings()
    entry = model.config.quantization_config.modules["input"]
    assert LayerLayout.from_config(entry) == layer.layout
