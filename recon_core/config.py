"""Typed component configs: dataclasses with defaults and help text.

A component's ``Config`` is a dataclass whose fields are declared with :func:`option`, so
``recon plugin-info`` can print them and ``--set PLUGIN.KEY=VALUE`` can parse into them.

Nested configs: a field whose type is a dataclass is a group of options, addressed with dotted
keys (``--set 3dgs-train.strategy.grow_grad2d=0.0003``), stored as a nested object in
``config.json`` and listed by ``plugin-info`` as ``strategy.grow_grad2d``. A nested class may
name one of its fields as its selector (``__selector__ = "name"``); then the group itself takes a
string that sets that field (``--set 3dgs-train.strategy=mcmc`` is ``strategy.name=mcmc``)::

    @dataclass
    class StrategyConfig:
        __selector__ = "name"
        name: str = option("default", "densification", choices=("default", "mcmc"))
        grow_grad2d: float = option(2e-4, "gradient threshold of densification")

    @dataclass
    class TrainConfig:
        steps: int = option(1000, "iterations")
        strategy: StrategyConfig = option(factory=StrategyConfig, help="densification strategy")

Sub-components: an option made with ``option(..., component=KIND)`` names a component of that
kind the owner creates through ``RunContext.create`` (``"none"`` or empty: none);
:func:`component_uses` lists them (the default :meth:`Component.uses`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Iterable, Mapping, Union

from .errors import InputError

__all__ = [
    "option",
    "EmptyConfig",
    "config_to_dict",
    "config_from_dict",
    "describe_options",
    "parse_value",
    "format_value",
    "parse_set_option",
    "nested_config",
    "component_uses",
    "option_names",
    "check_range",
    "auto_or_number",
]


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None, factory: Any = None,
           component: str | None = None, min: float | None = None, max: float | None = None,
           allow_nonfinite: bool = False) -> Any:
    """A config field with help text.

    Args:
        factory: builds the default (mutable defaults, and nested configs: ``factory=SubConfig``).
        choices: the allowed values.
        component: the option names a component of this kind (e.g. ``"generator"``) that the
            owner creates through ``RunContext.create``; ``"none"`` or empty means none. The
            pipeline resolves it before any work and ``--set NAME.KEY=VALUE`` configures it.
        min, max: the inclusive range of a number (of every number of a list); checked when a
            config is parsed (``--set``, config files, :func:`config_from_dict`).
        allow_nonfinite: accept ``nan``/``inf`` in a float option (rejected otherwise).
    """
    if min is not None and max is not None and min > max:
        raise TypeError(f"option range min={min} > max={max}")
    meta = {"help": help, "choices": choices, "component": component, "min": min, "max": max,
            "allow_nonfinite": allow_nonfinite}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _range_text(lo: float | None, hi: float | None) -> str | None:
    """``[0, 1]``, ``>= 1``, ``<= 10``; None without a range."""
    if lo is not None and hi is not None:
        return f"[{lo:g}, {hi:g}]"
    if lo is not None:
        return f">= {lo:g}"
    if hi is not None:
        return f"<= {hi:g}"
    return None


def _numbers(value: Any) -> list[Any]:
    """The numbers in ``value`` (itself, or the items of a list/tuple, nested), bools excluded."""
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return []


def check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    """InputError when ``value`` (a parsed value of field ``f``) holds a non-finite float (unless
    the option allows it) or a number outside the option's ``min``/``max``."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    for number in _numbers(value):
        if isinstance(number, float) and not math.isfinite(number):
            if f.metadata.get("allow_nonfinite"):
                continue
            raise InputError(f"bad value for {where}: {number} is not a finite number")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise InputError(f"bad value for {where}: {number:g} is out of range (must be {_range_text(lo, hi)})")


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


def format_value(value: Any) -> str:
    """How ``plugin-info`` shows an option's value: JSON (``[1.0, 1.0, 1.0]``, ``null``, ``true``,
    ``"alex"``). :func:`parse_value` accepts every such text back (``--set NAME.KEY=<that text>``)."""
    return json.dumps(_jsonable(value))


def _json_text(value: str, where: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"bad value for {where}: '{value}' is not valid JSON ({e.msg} at character {e.pos})") from None


def _is_json_string(value: Any) -> bool:
    """A JSON string literal such as ``"alex"`` (how plugin-info shows a string)."""
    return isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"'


def parse_value(tp: Any, value: Any, where: str) -> Any:
    """Coerce ``value`` (a string from the command line, or a JSON value) to type ``tp``.

    Command-line text is accepted in two forms: the short one (``1,1,1``, ``none``, ``yes``, ``alex``)
    and the JSON one that ``plugin-info`` shows (:func:`format_value`: ``[1.0, 1.0, 1.0]``,
    ``null``, ``true``, ``"alex"``).
    """
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional or value is None and tp is Any:
            return None
        raise InputError(f"{where} cannot be empty (expected {getattr(tp, '__name__', tp)})")
    tp = inner
    origin = typing.get_origin(tp) or (tp if tp in (list, tuple, dict) else None)  # bare `dict` as dict[Any, Any]
    if _is_json_string(value.strip() if isinstance(value, str) else value):
        decoded = _json_text(value.strip(), where)
        if isinstance(decoded, str):
            value = decoded
    if isinstance(value, str) and value.strip()[:1] in ("[", "{") and (origin in (list, tuple, dict) or tp is Any):
        value = _json_text(value.strip(), where)
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


def nested_config(tp: Any) -> type | None:
    """The dataclass of a nested config field's type ``tp`` (``X`` or ``X | None``), else None."""
    _, inner = _is_optional(tp)
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _selector(cls: type) -> str | None:
    selector = getattr(cls, "__selector__", None)
    if selector is not None and selector not in {f.name for f in dataclasses.fields(cls)}:
        raise TypeError(f"{cls.__name__}.__selector__ = {selector!r} is not one of its fields")
    return selector


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists, nested configs dicts)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return config_to_dict(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def option_names(cls: type, prefix: str = "") -> list[str]:
    """Every settable option of ``cls``, nested ones dotted (``strategy.grow_grad2d``)."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        sub = nested_config(hints[f.name])
        if sub is None or _selector(sub) is not None:
            out.append(prefix + f.name)
        if sub is not None:
            out += option_names(sub, f"{prefix}{f.name}.")
    return out


def config_from_dict(cls: type, values: Mapping[str, Any] | Iterable[tuple[str, Any]], where: str = "config") -> Any:
    """Build ``cls`` from a (possibly partial) mapping, checking names, types and choices.

    Keys may be dotted paths into nested configs (``"strategy.grow_grad2d"``); a nested config
    may also be given as a mapping, as an instance, or (when its class declares
    ``__selector__``) as a string setting the selector field. ``values`` may be a sequence of
    ``(key, value)`` pairs: they apply in order, so a later dotted key refines an earlier group.
    """
    if isinstance(values, Mapping):
        items = list(values.items())
    elif isinstance(values, (list, tuple)) and all(isinstance(i, tuple) and len(i) == 2 for i in values):
        items = list(values)
    else:
        raise InputError(f"options for {where} must be a mapping of option names to values, not {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    unknown = sorted({str(k).partition(".")[0] for k, _ in items} - set(fields))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for {where}; known options: {', '.join(sorted(option_names(cls))) or 'none'}"
        )
    flat: dict[str, Any] = {}
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in items:
        head, dot, rest = str(key).partition(".")
        sub = nested_config(hints[head])
        if sub is None:
            if dot:
                raise InputError(f"unknown option {where}.{key}: {where}.{head} is a single value, not a group of options")
            flat[head] = value
            continue
        group = groups.setdefault(head, [])
        if dot:
            group.append((rest, value))
        elif value is None and _is_optional(hints[head])[0]:
            groups[head] = []
            flat[head] = None
        elif isinstance(value, Mapping):
            group += list(value.items())
        elif isinstance(value, sub):
            group += list(config_to_dict(value).items())
        elif isinstance(value, str) and _selector(sub) is not None:
            group.append((_selector(sub), value))  # type: ignore[arg-type]
        else:
            selector = _selector(sub)
            raise InputError(
                f"bad value for {where}.{head}: it is a group of options; set {where}.{head}.KEY=VALUE "
                f"(options: {', '.join(option_names(sub)) or 'none'})"
                + (f" or {where}.{head}=<{selector}>" if selector else "")
            )
        flat.pop(head, None)
    kwargs = {}
    for name, value in flat.items():
        parsed = parse_value(hints[name], value, f"{where}.{name}")
        choices = fields[name].metadata.get("choices")
        if choices and parsed not in choices and not (parsed is None and fields[name].default is None):  # None = unset
            raise InputError(f"bad value for {where}.{name}: '{parsed}' is not one of {', '.join(map(str, choices))}")
        check_range(fields[name], parsed, f"{where}.{name}")
        kwargs[name] = parsed
    for name, group in groups.items():
        if name not in flat:
            sub = nested_config(hints[name])
            kwargs[name] = config_from_dict(sub, group, f"{where}.{name}")  # type: ignore[arg-type]
    return cls(**kwargs)


def component_uses(config: Any) -> list[tuple[str, str]]:
    """``(kind, name)`` of the options declared with ``option(..., component=KIND)`` in ``config``
    (nested configs included) whose value names a component (not empty, not ``"none"``)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return []
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = f.metadata.get("component")
        if kind and isinstance(value, str) and value.strip() and value.strip() != "none":
            out.append((kind, value.strip()))
        elif dataclasses.is_dataclass(value):
            out += component_uses(value)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def describe_options(cls: type, prefix: str = "") -> list[dict[str, Any]]:
    """Name, type, default, help, choices and range (``"[0, 1]"``, ``">= 1"`` or None) of every
    option, for plugin-info.

    Options of nested configs follow with dotted names (``strategy.grow_grad2d``); a nested
    config with a selector is also listed under its own name (a string setting the selector).
    """
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        tp = hints[f.name]
        sub = nested_config(tp)
        if sub is not None:
            selector = _selector(sub)
            if selector is not None:
                sel_field = next(s for s in dataclasses.fields(sub) if s.name == selector)
                chosen = getattr(default, selector, None) if default is not None else _default(sel_field)
                help_text = f.metadata.get("help", "") or sub.__name__
                out.append({
                    "name": prefix + f.name,
                    "type": "str",
                    "default": _jsonable(chosen),
                    "help": f"{help_text} (sets {prefix}{f.name}.{selector})",
                    "choices": list(sel_field.metadata["choices"]) if sel_field.metadata.get("choices") else None,
                    "range": None,
                })
            nested = describe_options(sub, f"{prefix}{f.name}.")
            if default is not None:  # the owner's defaults win over the nested class's
                for entry in nested:
                    path = entry["name"][len(prefix) + len(f.name) + 1:].split(".")
                    value: Any = default
                    for part in path:
                        value = getattr(value, part, None)
                    entry["default"] = _jsonable(value)
            out += nested
            continue
        out.append(
            {
                "name": prefix + f.name,
                "type": _type_name(tp),
                "default": _jsonable(default),
                "help": f.metadata.get("help", ""),
                "choices": list(f.metadata["choices"]) if f.metadata.get("choices") else None,
                "range": _range_text(f.metadata.get("min"), f.metadata.get("max")),
            }
        )
    return out


def _type_name(tp: Any) -> str:
    """``int``, ``list[str]``, ``str | None``: generic aliases keep their arguments."""
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def auto_or_number(value: Any, where: str, *, integer: bool = False, positive: bool = False) -> float | int | None:
    """An option that is ``auto`` or a number (``steps_scaler``, ``max_gaussians``): None for
    ``auto``, else the finite number (an int when ``integer``), >= 0 (> 0 when ``positive``);
    InputError naming ``where`` otherwise."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    kind = ("a whole number" if integer else "a number") + (" > 0" if positive else " >= 0")
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"bad value for {where}: '{value}' (auto, or {kind})") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0) or (integer and not number.is_integer()):
        raise InputError(f"bad value for {where}: {value} must be auto or {kind}")
    return int(number) if integer else number


def parse_set_option(text: str) -> tuple[str, str, str]:
    """Split ``PLUGIN.KEY=VALUE`` (from ``--set``) into its three parts.

    The plugin is the text before the first dot; the key may be a dotted path into nested
    configs (``3dgs-train.strategy.grow_grad2d=0.0003`` → ``("3dgs-train", "strategy.grow_grad2d", ...)``).
    """
    if "=" not in text:
        raise InputError(f"malformed --set '{text}': expected PLUGIN.KEY=VALUE (e.g. 3dgs-train.steps=1000)")
    target, value = text.split("=", 1)
    if "." not in target:
        raise InputError(f"malformed --set '{text}': expected PLUGIN.KEY=VALUE (e.g. 3dgs-train.steps=1000)")
    plugin, key = target.split(".", 1)
    if not plugin.strip() or not key.strip() or any(not part.strip() for part in key.split(".")):
        raise InputError(f"malformed --set '{text}': plugin and key must not be empty")
    return plugin.strip(), key.strip(), value
