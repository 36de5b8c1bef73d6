"""The repository's params.yaml and the typed defaults say the same thing.

Stages read ./params.yaml; code and tests that build a config without it (``SampleConfig()``,
``load_all`` in an empty folder) get the dataclass defaults. When one is retuned and the other is not,
a user who deletes a key silently trains something else than the documented default.
"""

from pathlib import Path

import yaml

from spritegen import params
from spritegen.config import from_dict

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_values_are_the_typed_defaults():
    written = yaml.safe_load(REPO_PARAMS.read_text())
    assert set(written) <= set(params.SECTIONS), f"unknown sections {set(written) - set(params.SECTIONS)}"
    for name, values in written.items():
        cls = params.section_class(name)
        assert from_dict(cls, values, name) == cls(), f"params.yaml section {name!r} differs from {cls.__name__}'s defaults"
