"""Shared fixtures: a synthetic prepared data set (coloured shapes whose prompts name colour + type)."""

import os

import pytest

os.environ.setdefault("DVCLIVE_TEST", "1")  # dvclive: no side effects outside the test's folders


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory):
    """A prepared folder like `spritegen prepare` writes: 32/8/8 sprites at 16x16."""
    from spritegen.data.synthetic import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared"), n_per_split=(32, 8, 8), resolution=16, seed=0)
