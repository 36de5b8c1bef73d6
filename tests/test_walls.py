"""Walls between parts of the code: which modules may not import which.

Each rule is one row of ``WALLS``: the source files it covers (globs relative to the repository) and
the modules they must not import (``fnmatch`` patterns over dotted names). Imports are read with
``ast`` from the source, so an import inside a function counts as much as one at the top, and nothing
is executed. For ``from a.b import c`` both ``a.b`` and ``a.b.c`` are checked, so a pattern can name a
module (``spritegen.ldm.train``) or a function in one (``spritegen.text.encoder.pretrain_mlm``).
``import a.b`` followed by ``a.b.c(...)`` is not seen: name the module, not the function, when that matters.

Add a wall by adding a row.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# repository folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"spritegen": "spritegen", "evaluate": "spritegen.evaluate", "sweeps": "spritegen.sweeps"}

# Trainers: the ldm loop, any future spritegen/<family>/train*.py or spritegen/train*, and the text
# encoder's training functions (its MLM pretraining and tokenizer training live beside the model).
TRAINERS = (
    "spritegen.train", "spritegen.train.*", "spritegen.train_*", "spritegen.training*",
    "spritegen.*.train", "spritegen.*.train.*", "spritegen.*.train_*", "spritegen.*.training*",
    "spritegen.text.*.pretrain_*", "spritegen.text.*.train_*", "spritegen.text.*.mask_tokens",
)


@dataclass(frozen=True)
class Wall:
    name: str
    sources: tuple[str, ...]  # globs relative to the repository root
    forbidden: tuple[str, ...]  # fnmatch patterns over dotted module (or module.name) paths
    why: str
    allowed: tuple[str, ...] = ()  # exceptions to `forbidden`, same patterns

    def breaks(self, name: str) -> bool:
        def hit(patterns):
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

        return hit(self.forbidden) and not hit(self.allowed)


WALLS = (
    Wall("evaluation imports no trainer", ("evaluate/**/*.py",), TRAINERS,
         "scores must not depend on how a generator is trained: an evaluation stage that imports the loop "
         "re-runs (and can change) whenever the loop changes, and a trainer could quietly share its code",
         allowed=("spritegen.evaluate.*",)),  # the evaluator's own training (train_clip) is evaluation
    Wall("training imports nothing from evaluation",
         ("spritegen/train/*.py", "spritegen/*/train.py", "spritegen/*/train_*.py", "spritegen/params.py",
          "spritegen/gan/monitor.py"),
         ("spritegen.evaluate", "spritegen.evaluate.*"),
         "a training stage that loads the evaluator re-runs when the evaluator changes, and params "
         "validation must not pull evaluation in through a registry of every section"),
    Wall("the shared collapse rubric imports neither evaluation nor training",
         ("spritegen/collapse.py",),
         ("spritegen.*", "torch", "torch.*"),
         "training and evaluation both score collapse with it (issue 13): it must stay pure NumPy maths that "
         "neither side's changes can reach"),
    Wall("model modules import no data loading, training loop or CLI",
         ("spritegen/ldm/vae.py", "spritegen/ldm/unet.py", "spritegen/ldm/diffusion.py", "spritegen/ldm/models.py",
          "spritegen/ldm/losses.py", "spritegen/text/encoder.py", "spritegen/cvae/model.py", "spritegen/cvae/config.py",
          "spritegen/image_losses.py", "spritegen/gan/model.py"),
         ("spritegen.data", "spritegen.data.*", *TRAINERS, "spritegen.cli", "spritegen.cli.*", "spritegen.params",
          "spritegen.params.*", "argparse", "dvclive", "dvclive.*"),
         "a model is loaded by sampling, the API and the evaluator: it must not drag in a data source, a loop "
         "or a command line, and the loop stays beside the model, not in its module"),
)


def module_name(path: Path) -> str:
    """Dotted name of a repository source file: evaluate/suite.py -> spritegen.evaluate.suite."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    package = PACKAGE_DIRS[parts[0]]
    rest = parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([package, *rest])


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every dotted name an import statement in ``source`` can bind, relative imports resolved against
    ``module``: ``import a.b`` -> a.b; ``from a.b import c`` -> a.b and a.b.c."""
    names: set[str] = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def violations(wall: Wall) -> list[str]:
    found = []
    for pattern in wall.sources:
        for path in sorted(REPO.glob(pattern)):
            module = module_name(path)
            for name in sorted(imported_names(path.read_text(), module, path.name == "__init__.py")):
                if wall.breaks(name):
                    found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("wall", WALLS, ids=[w.name for w in WALLS])
def test_wall(wall):
    assert any(any(REPO.glob(p)) for p in wall.sources), f"{wall.name}: no file matches {wall.sources}"
    found = violations(wall)
    assert not found, f"{wall.name} ({wall.why}):\n  " + "\n  ".join(found)


def test_the_checker_sees_what_it_must():
    """The rules are only as good as the import reader: every form of import is seen."""
    src = """
import spritegen.ldm.train
from spritegen.ldm import train
from spritegen.text.encoder import TextEncoder, pretrain_mlm
from ..ldm.train import main
def f():
    from spritegen.cvae.train import loop   # a future family, imported lazily
"""
    names = imported_names(src, "spritegen.evaluate.suite")
    assert {"spritegen.ldm.train", "spritegen.text.encoder.pretrain_mlm", "spritegen.cvae.train.loop"} <= names
    assert "spritegen.ldm.train.main" in names  # the relative import, resolved
    wall = WALLS[0]
    hits = {n for n in names | {"spritegen.evaluate.evaluator.train_clip"} if wall.breaks(n)}
    assert {"spritegen.ldm.train", "spritegen.text.encoder.pretrain_mlm", "spritegen.cvae.train"} <= hits
    assert "spritegen.text.encoder.TextEncoder" not in hits  # the model is not a trainer
    assert "spritegen.evaluate.evaluator.train_clip" not in hits  # the evaluator's own training is allowed
    assert module_name(REPO / "evaluate" / "suite.py") == "spritegen.evaluate.suite"
