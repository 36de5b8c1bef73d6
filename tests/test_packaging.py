"""The installed package holds every subpackage: a non-editable install (a wheel for a GPU machine,
`pip install .`) ships only what pyproject.toml lists, so a folder missing there imports in the
repository and fails everywhere else (spritegen/train was missing once)."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = {folder: package for package, folder in setuptools["package-dir"].items()}
    found = set()
    for folder, package in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join([package, *rel]))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
