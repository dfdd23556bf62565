"""recon_core.config: typed options, parsing from strings/JSON, descriptions, --set syntax."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recon_core.config import (
    EmptyConfig,
    config_from_dict,
    config_to_dict,
    describe_options,
    option,
    parse_set_option,
    parse_value,
)
from recon_core.errors import InputError


@dataclass
class Cfg:
    steps: int = option(100, "iterations")
    lr: float = option(1e-3, "learning rate")
    name: str = option("x", "a label")
    use_sh: bool = option(True, "spherical harmonics")
    sizes: list[int] = option(factory=lambda: [1, 2], help="sizes")
    path: str | None = option(None, "optional path")
    mode: Literal["fast", "slow"] = option("fast", "speed")
    level: Literal[1, 2] = option(1, "a numeric literal")
    strategy: str = option("default", "densification", choices=("default", "mcmc"))


def test_round_trip_through_json():
    cfg = Cfg(steps=5, lr=0.5, name="y", use_sh=False, sizes=[3], path="/a", mode="slow", level=2, strategy="mcmc")
    as_json = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(Cfg, as_json) == cfg
    assert config_from_dict(EmptyConfig, {}) == EmptyConfig()


def test_strings_from_the_command_line_are_parsed():
    cfg = config_from_dict(
        Cfg,
        {"steps": "7", "lr": "2e-2", "use_sh": "off", "sizes": "4, 5", "path": "none", "mode": "slow", "level": "2"},
    )
    assert (cfg.steps, cfg.lr, cfg.use_sh, cfg.sizes, cfg.path, cfg.mode, cfg.level) == (7, 0.02, False, [4, 5], None, "slow", 2)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stepz": 1}, "unknown option(s) stepz for cfg; known options: level, lr"),
        ({"steps": "1.5"}, "bad value for cfg.steps"),
        ({"steps": 2.5}, "bad value for cfg.steps"),
        ({"steps": True}, "bad value for cfg.steps"),
        ({"use_sh": "maybe"}, "'maybe' is not a boolean"),
        ({"mode": "medium"}, "'medium' is not one of fast, slow"),
        ({"strategy": "other"}, "'other' is not one of default, mcmc"),
        ({"name": None}, "cfg.name cannot be empty"),
    ],
)
def test_bad_values_name_option_and_problem(values, message):
    with pytest.raises(InputError) as info:
        config_from_dict(Cfg, values, where="cfg")
    assert message in str(info.value)


def test_options_must_be_a_mapping():
    with pytest.raises(InputError, match="must be a mapping"):
        config_from_dict(Cfg, ["steps"], where="cfg")  # type: ignore[arg-type]


def test_describe_options():
    described = {o["name"]: o for o in describe_options(Cfg)}
    assert described["steps"] == {"name": "steps", "type": "int", "default": 100, "help": "iterations", "choices": None}
    assert described["sizes"]["type"] == "list[int]" and described["sizes"]["default"] == [1, 2]
    assert described["path"]["type"] == "str | None"
    assert described["strategy"]["choices"] == ["default", "mcmc"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3dgs-train.steps=100", ("3dgs-train", "steps", "100")), ("a.b.c=x=y", ("a", "b.c", "x=y")), ("run.export=", ("run", "export", ""))],
)
def test_parse_set_option(text, expected):
    assert parse_set_option(text) == expected


@pytest.mark.parametrize("text", ["steps=3", "3dgs-train.steps", ".steps=1", "a.=1"])
def test_malformed_set_option(text):
    with pytest.raises(InputError, match="malformed --set"):
        parse_set_option(text)


@given(st.integers(-(2**40), 2**40))
def test_int_strings_round_trip(n):
    assert parse_value(int, str(n), "x") == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_strings_round_trip(x):
    assert parse_value(float, repr(x), "x") == x
