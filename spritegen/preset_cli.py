"""``spritegen preset``: list the named presets, show one, apply one to params.yaml.

    spritegen preset list
    spritegen preset show fast_high_quality
    spritegen preset apply fast_high_quality [--params params.yaml]   # rewrites params.yaml
    spritegen preset apply fast_high_quality --exp                    # prints a dvc exp run line

The presets themselves (files, composition, conflicts) are in :mod:`spritegen.presets`.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import yaml

from spritegen.config import deep_merge, read_yaml
from spritegen.params import DEFAULT_PARAMS, SECTIONS, validate_sections
from spritegen.presets import KINDS, PRESET_FILES, flatten, preset_overrides


def flow(value: Any) -> str:
    """A value as one line of YAML (``[8, 16]``, ``null``, ``0.0001``): what ``-S`` and the change list show."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("\n...").strip()  # a bare scalar is dumped as a document: "48\n...\n"


def list_main(args) -> int:
    presets = sorted(PRESET_FILES.values(), key=lambda p: (KINDS.index(p.kind), p.name))
    width = max(len(p.name) for p in presets)
    print(f"{'name':<{width}}  {'kind':<8}  description")
    for p in presets:
        print(f"{p.name:<{width}}  {p.kind:<8}  {p.description}")
    return 0


def _composition(name: str, depth: int = 0) -> list[str]:
    """``name`` and what it uses, one line each, indented by depth."""
    preset = PRESET_FILES[name]
    lines = [f"#   {'  ' * depth}{name} ({preset.kind}): {preset.description}"]
    for used in preset.uses:
        lines += _composition(used, depth + 1)
    return lines


def show_main(args) -> int:
    overrides = preset_overrides(args.name)  # an unknown name: the error lists the known ones
    # Comments only above the YAML, so the output is itself a valid overrides file.
    print(f"# preset {args.name}: composition (uses, in order; its own params on top)")
    print("\n".join(_composition(args.name)))
    print(yaml.safe_dump(overrides, sort_keys=False, width=100), end="")
    return 0


def with_preset(current: dict[str, Any], name: str) -> dict[str, Any]:
    """``current`` with the preset on top, validated in every section: a preset that would make
    params.yaml invalid is refused before anything is written."""
    merged = deep_merge(current, preset_overrides(name))
    validate_sections(merged, SECTIONS)
    return merged


def exp_command(overrides: dict[str, Any], current: dict[str, Any]) -> str:
    """``dvc exp run -S key=value ...``: the preset as an experiment, its values in ``dvc exp show``.
    DVC applies -S with Hydra's grammar, which refuses to override a key the file lacks; such keys
    get ``++`` (add or override)."""
    present = flatten(current)
    args = []
    for key, value in flatten(overrides).items():
        prefix = "" if key in present else "++"
        args += ["-S", shlex.quote(f"{prefix}{key}={flow(value)}")]
    return " ".join(["dvc", "exp", "run", *args])


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then rename it over: a crash leaves the old file whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)  # params.yaml's own style: block lists, keys in order
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def apply_main(args) -> int:
    path = Path(args.params or DEFAULT_PARAMS)
    overrides = preset_overrides(args.name)
    if args.exp:
        current = read_yaml(path) if path.exists() else {}
        with_preset(current, args.name)  # validated, though nothing is written: no doomed experiment
        print(exp_command(overrides, current))
        return 0
    current = read_yaml(path)  # apply edits a params file; a missing one is an error, not created
    merged = with_preset(current, args.name)
    before = flatten(current)
    changes = [(key, flow(before[key]) if key in before else "(not set)", flow(value))
               for key, value in flatten(overrides).items() if key not in before or before[key] != value]
    if not changes:
        print(f"{path}: already has preset {args.name}'s values; not rewritten")
        return 0
    write_atomically(path, merged)
    print(f"{path}: preset {args.name} applied, {len(changes)} change(s):")
    for key, old, new in changes:
        print(f"  {key}: {old} -> {new}")
    return 0
