"""Named presets: param overrides applied on top of params.yaml, kept as YAML files in this folder.

    spritegen preset list                      # name, kind, description
    spritegen preset show fast_high_quality    # what it sets, and which presets it is made of
    spritegen preset apply tiny [--exp]        # write it into params.yaml (or print a dvc exp run line)
    spritegen train text --preset tiny         # any command: params.yaml + the preset, nothing written

One file per preset; the file's name (without ``.yaml``) is the preset's name, unique across the
subfolders, which only group them by kind::

    kind: mode                    # profile | mode | loss | training | model | dataset
    description: one line
    uses: [high_quality, fast_high_quality_training, model_fast_high_quality]   # optional
    params:                       # optional: overrides in params.yaml's shape
      cvae: {init_from: null}

A preset's overrides are its ``uses`` resolved in order (recursively) with its own ``params`` on top.
Two used presets that set one key to different values are an error naming both and the key: a mode
is meant to be made of parts that do not overlap, and a silent "the last one wins" would hide which
value a run got. The preset's own ``params`` win over what it uses: that is a deliberate override.
See docs/presets.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from spritegen.config import ConfigError, deep_merge

PRESET_DIR = Path(__file__).resolve().parent

Kind = Literal["profile", "mode", "loss", "training", "model", "dataset"]
KINDS: tuple[str, ...] = get_args(Kind)
FILE_KEYS = ("kind", "description", "uses", "params")


@dataclass(frozen=True)
class Preset:
    """One preset file, as written (``uses`` not yet resolved)."""

    name: str
    kind: Kind
    description: str
    path: Path
    uses: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


def read_preset(path: Path) -> Preset:
    """One preset file, checked: a mapping of the known keys, a known kind, a one-line description."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"preset file {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path}: expected a mapping with keys {list(FILE_KEYS)}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"preset file {path}: unknown key(s) {unknown}; known keys: {list(FILE_KEYS)}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"preset file {path}: kind {kind!r} is not one of {list(KINDS)}")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise ConfigError(f"preset file {path}: description must be one line of text")
    uses = data.get("uses") or []
    if not isinstance(uses, list) or not all(isinstance(u, str) for u in uses):
        raise ConfigError(f"preset file {path}: uses must be a list of preset names")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"preset file {path}: params must be a mapping of params.yaml sections")
    return Preset(path.stem, kind, description.strip(), path, tuple(uses), params)


def load_presets(folder: Path = PRESET_DIR) -> dict[str, Preset]:
    """Every ``*.yaml`` under ``folder`` (subfolders included), by name; a name found twice is an error."""
    found: dict[str, Preset] = {}
    for path in sorted(folder.rglob("*.yaml")):
        preset = read_preset(path)
        if preset.name in found:
            raise ConfigError(f"preset {preset.name!r} is defined twice: {found[preset.name].path} and {path}")
        found[preset.name] = preset
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"cvae": {"lr": 1}}`` -> ``{"cvae.lr": 1}``; lists and empty mappings are values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _known(presets: dict[str, Preset]) -> str:
    return ", ".join(sorted(presets))


def _resolve(name: str, presets: dict[str, Preset], stack: tuple[str, ...]) -> tuple[dict, dict[str, str]]:
    """(overrides, the preset each dotted key came from)."""
    if name not in presets:
        where = f" (in uses of {stack[-1]!r})" if stack else ""
        raise ConfigError(f"unknown preset {name!r}{where}; known presets: {_known(presets)}")
    if name in stack:
        raise ConfigError(f"presets use each other in a cycle: {' -> '.join((*stack, name))}")
    preset = presets[name]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> the preset that set it
    for used in preset.uses:
        params, used_origin = _resolve(used, presets, (*stack, name))
        flat_merged = flatten(merged)
        for key, value in flatten(params).items():
            if key in flat_merged and flat_merged[key] != value:
                raise ConfigError(
                    f"preset {name!r}: {origin[key]!r} and {used_origin[key]!r} both set {key} "
                    f"({flat_merged[key]!r} vs {value!r}); to choose one, set it in the params of {name!r}")
        merged = deep_merge(merged, params)
        origin.update(used_origin)
    merged = deep_merge(merged, preset.params)
    origin.update({key: name for key in flatten(preset.params)})
    return merged, origin


def resolve(name: str, presets: dict[str, Preset]) -> dict[str, Any]:
    """A preset's effective overrides: its ``uses`` in order, then its own ``params``."""
    return _resolve(name, presets, ())[0]


# Read once at import: a broken shipped preset fails every command that names a preset, and
# tests/test_presets.py loads them all. PRESETS (name -> effective overrides) is what the rest of
# the code and the tests read; tests may monkeypatch it.
PRESET_FILES: dict[str, Preset] = load_presets()
PRESETS: dict[str, dict[str, Any]] = {name: resolve(name, PRESET_FILES) for name in PRESET_FILES}


def preset_overrides(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
