"""Typed component configs: dataclasses with defaults and help text.

A component's ``Config`` is a dataclass whose fields are declared with :func:`option`, so
``recon plugin-info`` can print them and ``--set PLUGIN.KEY=VALUE`` can parse into them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from .errors import InputError

__all__ = [
    "option",
    "EmptyConfig",
    "config_to_dict",
    "config_from_dict",
    "describe_options",
    "parse_value",
    "parse_set_option",
]


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None, factory: Any = None,
           component: str | None = None) -> Any:
    """A config field with help text (``factory`` for mutable defaults; ``component``: the field
    names a component of that kind which this one creates)."""
    meta = {"help": help, "choices": choices, "component": component}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class EmptyConfig:
    """A component without options."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def parse_value(tp: Any, value: Any, where: str) -> Any:
    """Coerce ``value`` (a string from the command line, or a JSON value) to type ``tp``."""
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or value is None and tp is Any:
            return None
        raise InputError(f"{where} cannot be empty (expected {getattr(tp, '__name__', tp)})")
    tp = inner
    origin = typing.get_origin(tp)
    try:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"'{value}' is not a boolean (true/false)")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"'{value}' is not an integer")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(f"'{value}' is not a number")
            return float(value)
        if tp is str:
            return str(value)
        if origin in (list, tuple):
            args = typing.get_args(tp)
            item_tp = args[0] if args else Any
            items = value if isinstance(value, (list, tuple)) else [s for s in str(value).split(",") if s.strip()]
            parsed = [parse_value(item_tp, (i.strip() if isinstance(i, str) else i), where) for i in items]
            return parsed if origin is list else tuple(parsed)
        if origin is typing.Literal:
            allowed = typing.get_args(tp)
            # command-line values arrive as strings: "2" selects Literal[1, 2]'s 2
            match = [a for a in allowed if a == value or (isinstance(value, str) and str(a) == value)]
            if not match:
                raise ValueError(f"'{value}' is not one of {', '.join(map(str, allowed))}")
            return match[0]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"bad value for {where}: {e}") from None
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return config_to_dict(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def config_from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build ``cls`` from a (possibly partial) dict, checking names, types and choices."""
    if not isinstance(values, dict):
        raise InputError(f"options for {where} must be a mapping of option names to values, not {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for {where}; known options: {', '.join(sorted(fields)) or 'none'}"
        )
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            kwargs[name] = config_from_dict(hints[name], value, f"{where}.{name}")
            continue
        parsed = parse_value(hints[name], value, f"{where}.{name}")
        choices = fields[name].metadata.get("choices")
        if choices and parsed not in choices:
            raise InputError(f"bad value for {where}.{name}: '{parsed}' is not one of {', '.join(map(str, choices))}")
        kwargs[name] = parsed
    return cls(**kwargs)


def describe_options(cls: type) -> list[dict[str, Any]]:
    """Name, type, default and help of every option, for plugin-info."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        tp = hints[f.name]
        out.append(
            {
                "name": f.name,
                "type": _type_name(tp),
                "default": _jsonable(default),
                "help": f.metadata.get("help", ""),
                "choices": list(f.metadata["choices"]) if f.metadata.get("choices") else None,
            }
        )
    return out


def _type_name(tp: Any) -> str:
    """``int``, ``list[str]``, ``str | None``: generic aliases keep their arguments."""
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def parse_set_option(text: str) -> tuple[str, str, str]:
    """Split ``PLUGIN.KEY=VALUE`` (from ``--set``) into its three parts."""
    if "=" not in text:
        raise InputError(f"malformed --set '{text}': expected PLUGIN.KEY=VALUE (e.g. 3dgs-train.steps=1000)")
    target, value = text.split("=", 1)
    if "." not in target:
        raise InputError(f"malformed --set '{text}': expected PLUGIN.KEY=VALUE (e.g. 3dgs-train.steps=1000)")
    plugin, key = target.rsplit(".", 1)
    if not plugin.strip() or not key.strip():
        raise InputError(f"malformed --set '{text}': plugin and key must not be empty")
    return plugin.strip(), key.strip(), value
