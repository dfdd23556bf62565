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
    component_uses,
    config_from_dict,
    config_to_dict,
    describe_options,
    format_value,
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
    assert described["steps"] == {"name": "steps", "type": "int", "default": 100, "help": "iterations", "choices": None, "range": None}
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


# ------------------------------------------------------------------------------ nested configs


@dataclass
class Strategy:
    __selector__ = "name"
    name: str = option("default", "densification", choices=("default", "gsplat-default", "mcmc"))
    grow_grad2d: float = option(2e-4, "gradient threshold")
    refine_every: int = option(100, "steps between refinements")


@dataclass
class Inner:
    depth: int = option(1, "a deeper level")


@dataclass
class Plain:
    inner: Inner = option(factory=Inner, help="no selector here")
    label: str = option("a", "text")


@dataclass
class Train:
    steps: int = option(10, "iterations")
    strategy: Strategy = option(factory=lambda: Strategy(grow_grad2d=3e-4), help="densification strategy")
    plain: Plain = option(factory=Plain, help="two levels")
    generator: str = option("render-fix", "extra views", component="generator")
    fixer_name: str = option("none", "not a declaration by name", component="fixer")


def test_nested_dotted_keys_groups_and_instances():
    cfg = config_from_dict(Train, {"strategy.grow_grad2d": "0.0005", "plain.inner.depth": "3"}, where="t")
    assert cfg.strategy == Strategy(grow_grad2d=5e-4) and cfg.plain.inner.depth == 3 and cfg.steps == 10
    assert config_from_dict(Train, {"strategy": {"refine_every": 7}}).strategy == Strategy(refine_every=7)
    assert config_from_dict(Train, {"strategy": Strategy(name="mcmc")}).strategy.name == "mcmc"
    # ordered pairs: a later dotted key refines an earlier group (a config file, then --set)
    cfg = config_from_dict(Train, [("strategy", {"name": "mcmc", "refine_every": 5}), ("strategy.refine_every", "9")])
    assert (cfg.strategy.name, cfg.strategy.refine_every) == ("mcmc", 9)


def test_nested_round_trip_through_json():
    cfg = Train(steps=3, strategy=Strategy(name="mcmc", grow_grad2d=1e-3), plain=Plain(Inner(4), "b"))
    as_json = json.loads(json.dumps(config_to_dict(cfg)))
    assert as_json["strategy"] == {"name": "mcmc", "grow_grad2d": 1e-3, "refine_every": 100}
    assert as_json["plain"] == {"inner": {"depth": 4}, "label": "b"}
    assert config_from_dict(Train, as_json) == cfg


def test_selector_sets_the_named_field():
    cfg = config_from_dict(Train, [("strategy", "mcmc"), ("strategy.grow_grad2d", "0.001")])
    assert cfg.strategy == Strategy(name="mcmc", grow_grad2d=1e-3)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy.grow": 1}, "unknown option(s) grow for t.strategy; known options: grow_grad2d, name, refine_every"),
        ({"plain.inner.deep": 1}, "unknown option(s) deep for t.plain.inner; known options: depth"),
        ({"strategy": "other"}, "bad value for t.strategy.name: 'other' is not one of default, gsplat-default, mcmc"),
        ({"plain": "x"}, "bad value for t.plain: it is a group of options; set t.plain.KEY=VALUE (options: inner.depth, label)"),
        ({"steps.x": 1}, "unknown option t.steps.x: t.steps is a single value"),
        ({"strategy.refine_every": "soon"}, "bad value for t.strategy.refine_every"),
        ({"nope.x": 1}, "unknown option(s) nope for t; known options: fixer_name, generator, plain.inner.depth"),
    ],
)
def test_nested_errors_name_the_path(values, message):
    with pytest.raises(InputError) as info:
        config_from_dict(Train, values, where="t")
    assert message in str(info.value)


def test_describe_nested_options_with_dotted_names():
    described = {o["name"]: o for o in describe_options(Train)}
    assert described["strategy.grow_grad2d"]["default"] == 3e-4  # the owner's default instance
    assert described["strategy.refine_every"]["type"] == "int"
    assert described["strategy"] == {"name": "strategy", "type": "str", "default": "default",
                                     "help": "densification strategy (sets strategy.name)",
                                     "choices": ["default", "gsplat-default", "mcmc"], "range": None}
    assert described["plain.inner.depth"]["default"] == 1 and "plain" not in described and "plain.inner" not in described


def test_component_declarations_are_explicit():
    assert component_uses(Train()) == [("generator", "render-fix")]  # fixer_name "none": none
    assert component_uses(Train(fixer_name="difix")) == [("generator", "render-fix"), ("fixer", "difix")]

    @dataclass
    class ByName:
        generator: str = option("render-fix", "a field named after a kind declares nothing by itself")

    assert component_uses(ByName()) == []


def test_parse_nested_set_option():
    assert parse_set_option("3dgs-train.strategy.grow_grad2d=0.0003") == ("3dgs-train", "strategy.grow_grad2d", "0.0003")
    assert parse_set_option("3dgs-train.strategy=mcmc") == ("3dgs-train", "strategy", "mcmc")


# ------------------------------------------------------------------ what plugin-info shows, --set takes


@dataclass
class Shown:
    colour: tuple[float, float, float] = option((1.0, 1.0, 1.0), "a colour")
    milestones: list[float] | None = option(None, "optional list")
    views: tuple[int, ...] = option((0,), "indices")
    net: str = option("alex", "a name", choices=("alex", "vgg"))
    path: str | None = option(None, "optional text")
    flag: bool = option(True, "a switch")
    mode: Literal["a", "b"] = option("a", "a literal")
    label: str = option("", "empty by default")


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("colour", "[0.0, 0.5, 1.0]", (0.0, 0.5, 1.0)),
        ("colour", "[0,0.5,1]", (0.0, 0.5, 1.0)),
        ("colour", "0,0.5,1", (0.0, 0.5, 1.0)),  # the short form still works
        ("milestones", "[0.5, 0.75]", [0.5, 0.75]),
        ("milestones", "null", None),
        ("milestones", "[]", []),
        ("views", "[2, 3]", (2, 3)),
        ("net", '"vgg"', "vgg"),
        ("net", "vgg", "vgg"),
        ("path", '"null"', "null"),  # a JSON string is a string, even one that reads null
        ("path", '"a b.json"', "a b.json"),
        ("flag", "false", False),
        ("mode", '"b"', "b"),
        ("label", '""', ""),
    ],
)
def test_set_accepts_the_json_form(key, text, expected):
    plugin, k, value = parse_set_option(f"p.{key}={text}")
    assert getattr(config_from_dict(Shown, [(k, value)], where=plugin), key) == expected


@pytest.mark.parametrize(
    "key, text, message",
    [
        ("colour", "[1.0", "'[1.0' is not valid JSON"),
        ("colour", '["a", 1, 1]', "could not convert string to float"),
        ("net", '"resnet"', "'resnet' is not one of alex, vgg"),
        ("flag", "maybe", "is not a boolean"),
    ],
)
def test_bad_json_form_names_the_option(key, text, message):
    with pytest.raises(InputError) as info:
        config_from_dict(Shown, [(key, text)], where="p")
    assert message in str(info.value) and f"p.{key}" in str(info.value)


def _round_trip(name: str, config_cls: type) -> list[str]:
    """Feed every default ``plugin-info`` shows for ``config_cls`` back through ``--set``; the
    options whose parsed config differs from the defaults."""
    defaults = config_to_dict(config_cls())
    wrong = []
    for entry in describe_options(config_cls):
        shown = format_value(entry["default"])
        plugin, key, value = parse_set_option(f"{name}.{entry['name']}={shown}")
        assert (plugin, key, value) == (name, entry["name"], shown)
        try:
            parsed = config_to_dict(config_from_dict(config_cls, [(key, value)], where=name))
        except InputError as e:
            wrong.append(f"{name}.{key}={shown}: {e}")
            continue
        if parsed != defaults:
            wrong.append(f"{name}.{key}={shown}: parsed to {parsed} instead of {defaults}")
    return wrong


def test_every_displayed_default_is_accepted_back_by_set():
    """For every installed component (and the pipeline's run options), each option's default as
    plugin-info displays it, given back to --set in that same form, parses to the same config."""
    from recon_core.registry import Registry
    from recon_core.spec import RunOptions

    registry = Registry()
    rows = [r for r in registry.rows() if r.cls is not None]
    assert {"nerfstudio", "3dgs-train", "lpips", "run"} <= {r.name for r in rows} | {"run"}
    kinds = {r.kind for r in rows}
    assert {"loader", "representation", "renderer", "refiner", "evaluator", "fixer", "encoder", "generator"} <= kinds
    wrong = _round_trip("run", RunOptions)
    shown = 0
    for row in rows:
        wrong += _round_trip(row.name, row.cls.Config)
        shown += len(describe_options(row.cls.Config))
    assert shown > 200  # every option of every component was tried
    assert not wrong, "\n".join(wrong)


def test_round_trip_reports_values_set_would_misread():
    """The check above can fail: a default that its own type cannot read back is reported."""

    @dataclass
    class Odd:
        weights: dict = option(factory=lambda: {"a": [1, 2]}, help="a mapping: read back from its JSON")
        count: int = option(1.5, "a default that is not an integer")

    wrong = _round_trip("odd", Odd)
    assert len(wrong) == 1 and wrong[0].startswith("odd.count=1.5: bad value for odd.count")


@dataclass
class Ranged:
    steps: int = option(10, "iterations", min=1)
    every: int = option(0, "every N (0: never)", min=0)
    weight: float = option(0.5, "a fraction", min=0, max=1)
    lr: float = option(1e-3, "learning rate", min=0)
    colour: list[float] = option(factory=lambda: [1.0, 1.0, 1.0], help="RGB", min=0, max=1)
    free: float = option(1.0, "anything finite")
    wild: float = option(1.0, "may be infinite", allow_nonfinite=True)
    maybe: float | None = option(None, "optional", min=0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("steps", "0", "bad value for r.steps: 0 is out of range (must be >= 1)"),
        ("every", -1, "r.every: -1 is out of range (must be >= 0)"),
        ("weight", "1.5", "r.weight: 1.5 is out of range (must be [0, 1])"),
        ("lr", "-0.1", "r.lr: -0.1 is out of range (must be >= 0)"),
        ("colour", "1,2,0", "r.colour: 2 is out of range (must be [0, 1])"),
        ("lr", "nan", "r.lr: nan is not a finite number"),
        ("free", "inf", "r.free: inf is not a finite number"),
        ("free", float("-inf"), "r.free: -inf is not a finite number"),
        ("colour", [0.5, float("nan"), 0.5], "r.colour: nan is not a finite number"),
        ("maybe", "-1", "r.maybe: -1 is out of range"),
    ],
)
def test_ranges_and_non_finite_values_are_rejected(key, value, message):
    with pytest.raises(InputError) as info:
        config_from_dict(Ranged, {key: value}, where="r")
    assert message in str(info.value)


def test_values_inside_ranges_and_allowed_non_finite_pass():
    cfg = config_from_dict(Ranged, {"steps": "1", "every": 0, "weight": "1", "lr": 0, "colour": "0,1,0.5",
                                    "wild": "inf", "maybe": "none"}, where="r")
    assert (cfg.steps, cfg.weight, cfg.colour, cfg.wild, cfg.maybe) == (1, 1.0, [0.0, 1.0, 0.5], float("inf"), None)


def test_describe_options_shows_ranges():
    described = {o["name"]: o["range"] for o in describe_options(Ranged)}
    assert described == {"steps": ">= 1", "every": ">= 0", "weight": "[0, 1]", "lr": ">= 0", "colour": "[0, 1]",
                         "free": None, "wild": None, "maybe": ">= 0"}
    with pytest.raises(TypeError):
        option(1, "bad", min=2, max=1)


def test_no_installed_float_option_allows_non_finite_values():
    import dataclasses as dc

    from recon_core.optim import OptimConfig
    from recon_core.registry import Registry
    from recon_core.spec import RunOptions
    from recon_core.strategies import StrategyConfig

    configs = [RunOptions, OptimConfig, StrategyConfig] + [r.cls.Config for r in Registry().rows() if r.cls is not None]
    for cls in configs:
        for f in dc.fields(cls):
            assert not f.metadata.get("allow_nonfinite"), f"{cls.__name__}.{f.name}"
