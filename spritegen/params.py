"""params.yaml: one section per stage, each a typed dataclass owned by the module that reads it.

``load_section("unet")`` is what a stage calls: it reads params.yaml (optionally a preset on top),
validates *every* section (so a typo anywhere is caught before any stage starts) and returns the one
asked for. Presets live in :mod:`spritegen.presets`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from spritegen.config import ConfigError, deep_merge, from_dict, read_yaml, to_dict

DEFAULT_PARAMS = Path("params.yaml")

# section name -> "module:DataclassName". The module that owns a section reads it; nothing else does.
SECTIONS: dict[str, str] = {
    "data": "spritegen.data.sources:DataConfig",
    "metadata": "spritegen.data.metadata:MetadataConfig",
    "prepare": "spritegen.data.prepare:PrepareConfig",
    "text": "spritegen.text.encoder:TextConfig",
    "vae": "spritegen.ldm.vae:VAEConfig",
    "unet": "spritegen.ldm.unet:UNetConfig",
    "ldm": "spritegen.ldm.schedule:LDMScheduleConfig",
    "sample": "spritegen.sampling:SampleConfig",
    "evaluator": "spritegen.evaluate.evaluator:EvaluatorConfig",
    "evaluate": "spritegen.evaluate.suite:EvaluateConfig",
    "gate": "spritegen.evaluate.gate:GateConfig",
}


def section_class(name: str) -> type:
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r}; known sections: {sorted(SECTIONS)}")
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def raw_params(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """The params mapping: the file (if it exists or was named), with the preset's overrides on top."""
    from spritegen.presets import preset_overrides

    data: dict[str, Any] = {}
    if path is not None or DEFAULT_PARAMS.exists():
        data = read_yaml(path or DEFAULT_PARAMS)
    if preset:
        data = deep_merge(data, preset_overrides(preset))
    return data


def load_all(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """Every section validated: ``{name: dataclass}``. Sections absent from the file take defaults."""
    data = raw_params(path, preset)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params: unknown section(s) {unknown}; known sections: {sorted(SECTIONS)}")
    return {name: from_dict(section_class(name), data.get(name), name) for name in SECTIONS}


def load_section(name: str, path: str | Path | None = None, preset: str | None = None) -> Any:
    return load_all(path, preset)[name]


def resolved(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """All sections with defaults filled in, as plain data (what `spritegen params` prints)."""
    return {name: to_dict(cfg) for name, cfg in load_all(path, preset).items()}
