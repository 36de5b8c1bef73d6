"""Named presets: overrides applied on top of params.yaml.

* ``default``: params.yaml as it is (sized for a 2-core CPU: the whole pipeline in about 15 minutes).
* ``ci``: the profile the quality gate runs (a few minutes on 2 cores, deterministic on the CPU).
* ``tiny``: seconds, for tests. Its numbers mean nothing; it only exercises every code path.

Write one to a file with ``spritegen params --preset ci > params.yaml``.
"""

from __future__ import annotations

from spritegen.config import ConfigError

PRESETS: dict[str, dict] = {
    "default": {},
    "ci": {
        "metadata": {"limit": 320},
        "prepare": {"resolution": 32},
    },
    "tiny": {
        "metadata": {"limit": 48, "prompts_per_sprite": 5},
        "prepare": {"resolution": 16},
    },
}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
