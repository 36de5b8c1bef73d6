"""Shared fixtures: a synthetic prepared data set (coloured shapes whose prompts name colour + type)."""

import os

import pytest

os.environ.setdefault("DVCLIVE_TEST", "1")  # dvclive: no side effects outside the test's folders


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory):
    """A prepared folder like `spritegen prepare` writes: 32/8/8 sprites at 16x16."""
    from spritegen.data.synthetic import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared"), n_per_split=(32, 8, 8), resolution=16, seed=0)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A project folder with every family trained on the tiny preset (text, ldm's three stages, cvae,
    gan): what `spritegen serve` and the browser test serve. About a minute on 2 cores, once per session."""
    from spritegen.cli import main as cli
    from spritegen.data.synthetic import write_prepared

    root = tmp_path_factory.mktemp("project")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_prepared(root / "data/prepared", n_per_split=(24, 8, 8), resolution=16, seed=0)
    assert cli(["train", "text", "--preset", "tiny"]) == 0
    for stage in ("vae", "unet", "finetune"):
        assert cli(["train", "ldm", "--stage", stage, "--preset", "tiny"]) == 0
    assert cli(["train", "cvae", "--preset", "tiny"]) == 0
    assert cli(["train", "gan", "--preset", "tiny"]) == 0
    mp.undo()
    return root
