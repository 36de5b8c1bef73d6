"""params.yaml: one section per concern, each a typed dataclass owned by the module that reads it.

A stage loads only the sections it reads (``load_sections``), so a training process never imports the
evaluation code that owns other sections; ``load_all`` (``spritegen params``) validates every section.
Either way the file's unknown sections are refused first. ``select`` picks the dotted keys a stage
declares (its DVC ``params:``): what it shows at start, saves beside its outputs and fingerprints for
resume. Presets live in :mod:`spritegen.presets`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Iterable

from spritegen.config import ConfigError, deep_merge, from_dict, read_yaml, to_dict

DEFAULT_PARAMS = Path("params.yaml")

# section name -> "module:DataclassName". The module that owns a section reads it; nothing else does.
SECTIONS: dict[str, str] = {
    "data": "spritegen.data.sources:DataConfig",
    "metadata": "spritegen.data.metadata:MetadataConfig",
    "prepare": "spritegen.data.prepare:PrepareConfig",
    "train": "spritegen.train.config:RunConfig",
    "text": "spritegen.text.encoder:TextConfig",
    "vae": "spritegen.ldm.vae:VAEConfig",
    "unet": "spritegen.ldm.unet:UNetConfig",
    "ldm": "spritegen.ldm.schedule:LDMScheduleConfig",
    "cvae": "spritegen.cvae.config:CVAEConfig",
    "gan": "spritegen.gan.config:GANConfig",
    "sample": "spritegen.sampling:SampleConfig",
    "evaluator": "spritegen.evaluate.evaluator:EvaluatorConfig",
    "evaluate": "spritegen.evaluate.suite:EvaluateConfig",
    "gate": "spritegen.evaluate.gate:GateConfig",
    "serve": "spritegen.serve.config:ServeConfig",
}


def section_class(name: str) -> type:
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r}; known sections: {sorted(SECTIONS)}")
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def raw_params(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """The params mapping: the file (if it exists or was named), with the preset's overrides on top;
    an unknown section is an error naming it."""
    data: dict[str, Any] = {}
    if path is not None or DEFAULT_PARAMS.exists():
        data = read_yaml(path or DEFAULT_PARAMS)
    if preset:
        from spritegen.presets import preset_overrides

        data = deep_merge(data, preset_overrides(preset))
    return data


def validate_sections(data: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The named sections of a params mapping, validated: ``{name: dataclass}`` (absent ones take their
    defaults); an unknown section anywhere in ``data`` is an error naming it."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params: unknown section(s) {unknown}; known sections: {sorted(SECTIONS)}")
    return {name: from_dict(section_class(name), data.get(name), name) for name in names}


def load_sections(names: Iterable[str], path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """The named sections of params.yaml (with a preset on top), validated."""
    return validate_sections(raw_params(path, preset), names)


def load_all(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """Every section validated (``spritegen params``, tests)."""
    return load_sections(SECTIONS, path, preset)


def load_section(name: str, path: str | Path | None = None, preset: str | None = None) -> Any:
    return load_sections([name], path, preset)[name]


def resolved(path: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """All sections with defaults filled in, as plain data (what `spritegen params` prints)."""
    return {name: to_dict(cfg) for name, cfg in load_all(path, preset).items()}


def select(cfgs: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` (``"train"``, ``"vae.lr"``, ``"ldm.stage_epochs.vae"``) as one nested
    mapping, the shape of params.yaml: what a stage reads, and nothing else (only those fields are read)."""
    out: dict[str, Any] = {}
    for key in keys:
        section, *path = key.split(".")
        value = cfgs[section]
        for part in path:
            if not hasattr(value, part):
                raise ConfigError(f"{key}: no such param")
            value = getattr(value, part)
        node = out
        parts = [section, *path]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = to_dict(value)
    return out


def show(title: str, params: dict[str, Any], extra: str = "") -> None:
    """Print the params a stage runs with (at start, so a log always says what made its outputs)."""
    import yaml

    print(f"{title}\n{yaml.safe_dump(params, sort_keys=False)}{extra}", file=sys.stderr, flush=True)
