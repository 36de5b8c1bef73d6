"""Config validation: the generic loader (spritegen.config) and the data sections (data, metadata, prepare)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from spritegen import params, presets
from spritegen.cli import main as cli_main
from spritegen.config import ConfigError, from_dict, to_dict
from spritegen.data.metadata import MetadataConfig
from spritegen.data.prepare import PrepareConfig
from spritegen.data.sources import DataConfig

DATA_SECTIONS = {k: params.SECTIONS[k] for k in ("data", "metadata", "prepare")}


@pytest.fixture(autouse=True)
def only_data_sections(monkeypatch):
    # Other sections belong to other modules (models, evaluation) and are tested there; these tests check
    # the data sections alone, so they pass whatever state the other modules are in.
    monkeypatch.setattr(params, "SECTIONS", dict(DATA_SECTIONS))
    monkeypatch.setattr(
        presets,
        "PRESETS",
        {name: {k: v for k, v in p.items() if k in DATA_SECTIONS} for name, p in presets.PRESETS.items()},
    )


# --- the generic loader --------------------------------------------------------------------------------


@dataclass
class Inner:
    lr: float = field(default=1e-3, metadata={"gt": 0})
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    steps: int = field(default=10, metadata={"ge": 1})
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=lambda: [1, 2], metadata={"ge": 0})
    maybe: int | None = None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stepz": 3}, r"unknown key\(s\) \['stepz'\]"),
        ({"steps": "10"}, "steps: expected an integer"),
        ({"steps": 1.5}, "steps: expected an integer"),
        ({"steps": True}, "steps: expected an integer"),
        ({"steps": 0}, "steps: 0 must be >= 1"),
        ({"name": 3}, "name: expected a string"),
        ({"inner": {"mode": "c"}}, r"inner.mode: 'c' is not one of \['a', 'b'\]"),
        ({"inner": {"lr": 0}}, "inner.lr: 0.0 must be > 0"),
        ({"inner": {"lrr": 1}}, r"inner: unknown key\(s\) \['lrr'\]"),
        ({"inner": 5}, "inner: expected a mapping"),
        ({"sizes": [1, -2]}, r"sizes\[1\]: -2 must be >= 0"),
        ({"sizes": 3}, "sizes: expected a list"),
        ({"maybe": "x"}, "maybe: expected an integer"),
    ],
)
def test_loader_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_loader_accepts_valid_data_and_round_trips():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"lr": "1e-4", "mode": "b"}, "maybe": None})
    assert cfg.inner.lr == 1e-4 and cfg.inner.mode == "b" and cfg.maybe is None
    assert from_dict(Outer, to_dict(cfg)) == cfg


# --- our sections ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (DataConfig, {"source": "kaggle"}, r"source: 'kaggle' is not one of \['pokemon', 'pokesprite', 'folder'\]"),
        (DataConfig, {"path": 3}, "path: expected a path"),
        (DataConfig, {"source": "pokemon", "path": "x"}, "path/descriptions are for source 'folder'"),
        (DataConfig, {"include_shiny": "yes"}, "include_shiny: expected true/false"),
        (MetadataConfig, {"prompts_per_sprite": 4}, "prompts_per_sprite: 4 must be >= 5"),
        (MetadataConfig, {"prompts_per_sprite": 99}, "prompts_per_sprite: 99 must be <= 10"),
        (MetadataConfig, {"limit": 0}, "limit: 0 must be >= 1"),
        (MetadataConfig, {"limit": "ten"}, "limit: expected an integer"),
        (MetadataConfig, {"captioner": 1}, "captioner: expected a string"),
        (PrepareConfig, {"resolution": 4}, "resolution: 4 must be >= 8"),
        (PrepareConfig, {"resolution": 64.0}, "resolution: expected an integer"),
        (PrepareConfig, {"background": [255, 255]}, "background: expected 3 items"),
        (PrepareConfig, {"background": [255, 300, 255]}, r"background\[1\]: 300 must be <= 255"),
        (PrepareConfig, {"splits": [0.8, 0.1, 0.05]}, "splits: .* must sum to 1"),
        (PrepareConfig, {"splits": [0, 0.5, 0.5]}, "train fraction must be > 0"),
        (PrepareConfig, {"splits": [1.2, -0.1, -0.1]}, r"splits\[0\]: 1.2 must be <= 1"),
        (PrepareConfig, {"resample": "cubic"}, "resample: 'cubic' is not one of"),
        (PrepareConfig, {"margin": 0.5}, "margin: 0.5 must be <= 0.45"),
    ],
)
def test_section_errors(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, data)


def test_defaults_match_the_issue():
    p = PrepareConfig()
    assert p.resolution in (32, 64) and p.background == (255, 255, 255) and p.splits == (0.8, 0.15, 0.05)
    assert DataConfig().source == "pokemon"
    assert MetadataConfig().prompts_per_sprite >= 5 and MetadataConfig().limit is None


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_file_errors_are_prefixed_with_the_section(tmp_path):
    """A stage validates the sections it reads (and refuses unknown sections) before any work;
    `spritegen params` (load_all) validates every section."""
    with pytest.raises(ConfigError, match=r"prepare.resolution: 2 must be >= 8"):
        params.load_section("prepare", _write(tmp_path, {"prepare": {"resolution": 2}}))
    with pytest.raises(ConfigError, match=r"prepare.resolution: 2 must be >= 8"):
        params.load_all(_write(tmp_path, {"prepare": {"resolution": 2}}))
    with pytest.raises(ConfigError, match=r"metadata: unknown key\(s\) \['promts_per_sprite'\]"):
        params.load_all(_write(tmp_path, {"metadata": {"promts_per_sprite": 6}}))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['preapre'\]"):
        params.load_section("metadata", _write(tmp_path, {"preapre": {}}))
    with pytest.raises(ConfigError, match=r"prepare.background\[2\]"):
        params.load_all(_write(tmp_path, {"prepare": {"background": [0, 0, 256]}}))


@pytest.mark.parametrize("preset", ["default", "ci", "tiny"])
def test_presets_are_valid(tmp_path, preset):
    sections = params.load_all(_write(tmp_path, {}), preset)
    assert isinstance(sections["prepare"], PrepareConfig)
    if preset == "tiny":
        assert sections["metadata"].limit and sections["prepare"].resolution <= 32


@pytest.mark.parametrize("argv, section, key, value", [
    (["metadata"], "metadata", "prompts_per_sprite", 0),
    (["prepare"], "prepare", "resample", "bogus"),
    (["data", "fetch"], "data", "source", "bogus"),
])
def test_stage_fails_on_bad_params_before_any_work(tmp_path, capsys, argv, section, key, value):
    """A stage validates the sections it reads before any work (and refuses unknown sections)."""
    bad = _write(tmp_path, {section: {key: value}})
    out = tmp_path / "out"
    code = cli_main([*argv, "--params", str(bad), "--out", str(out)])
    assert code == 2
    assert f"{section}.{key}: " in capsys.readouterr().err
    assert not out.exists()  # nothing was written
    code = cli_main([*argv, "--params", str(_write(tmp_path, {"evalute": {}})), "--out", str(out)])
    assert code == 2 and "unknown section(s) ['evalute']" in capsys.readouterr().err and not out.exists()
