"""Typed configuration: dataclasses validated on load.

Every section of ``params.yaml`` is a dataclass owned by the module that reads it (``prepare`` by
``spritegen.data.prepare``, ``unet`` by ``spritegen.ldm``...). This module only knows how to turn a
plain mapping into such a dataclass, strictly:

* an unknown key is an error naming the key and the keys that exist;
* a value of the wrong type is an error naming the key, the expected and the given type;
* a value outside its range (``field(metadata={"ge": 0})``) or outside a ``Literal`` is an error;
* a dataclass may define ``validate(self)`` for cross-field rules; it raises ``ConfigError``.

Ranges are declared next to the field::

    @dataclass
    class VAEConfig:
        lr: float = field(default=1e-4, metadata={"gt": 0, "doc": "AdamW learning rate"})

All errors are raised before any work starts, so a typo in params.yaml never costs a training run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key (dotted path) and why."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (converted where lossless)."""
    origin = get_origin(tp)

    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_convert(k, k_tp, f"{key}.<key>"): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-4" as a string; accept numeric strings, refuse the rest.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {type(value).__name__} {value!r}")
        return Path(value)
    raise ConfigError(f"{key}: unsupported annotation {_type_name(tp)}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if "ge" in meta and not value >= meta["ge"]:
        raise ConfigError(f"{key}: {value!r} must be >= {meta['ge']}")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{key}: {value!r} must be > {meta['gt']}")
    if "le" in meta and not value <= meta["le"]:
        raise ConfigError(f"{key}: {value!r} must be <= {meta['le']}")
    if "lt" in meta and not value < meta["lt"]:
        raise ConfigError(f"{key}: {value!r} must be < {meta['lt']}")


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys, types, ranges and ``validate()``."""
    where = key or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        converted = _convert(value, hints[name], sub)
        _check_range(converted, fields[name].metadata, sub)
        if isinstance(converted, (list, tuple)):
            for i, item in enumerate(converted):
                _check_range(item, fields[name].metadata, f"{sub}[{i}]")
        kwargs[name] = converted
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    # Defaults are checked too: a default outside its own range is a bug we want to hear about.
    for name, f in fields.items():
        if name not in data:
            _check_range(getattr(obj, name), f.metadata, f"{key}.{name}" if key else name)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if not key or msg.startswith(key) else f"{key}.{msg}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain YAML-safe data: the resolved config written beside outputs."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` applied on ``base`` (nested mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data

