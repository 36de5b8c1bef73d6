"""Which checkpoint a request means, loaded once per process.

A request names a ``family`` and optionally an ``experiment``:

* no experiment (or ``workspace``): the project's own ``models/<family>`` folder;
* a DVC experiment's name (as ``dvc exp show`` lists it): that experiment's ``models/<family>``, copied
  once out of the DVC cache (``DVCFileSystem`` at the experiment's commit) into
  ``.spritegen/serve/<commit>/`` and loaded from there.

Names are never joined into paths as given: a family must be one of the configured families and an
experiment one of the names ``dvc exp show`` printed, and every folder that is loaded must resolve (after
symlinks) inside the project's model folder or the server's own cache. Checkpoints load through
safetensors only (spritegen/checkpoint.py); a file that is not one is refused, naming it.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spritegen.errors import UserError
from spritegen.generators import Generator, load_generator

# the command that trains each family (its DVC stages), for the 503 a missing model answers
TRAIN_COMMAND = {"ldm": "dvc repro ldm_finetune", "cvae": "dvc repro cvae", "gan": "dvc repro gan"}
WORKSPACE = "workspace"


class NotTrained(UserError):
    """The family (or the experiment's copy of it) has no checkpoint: 503, with the command that trains it."""


class Refused(UserError):
    """A name that is not allowed (unknown, or resolving outside the model folders): 422 naming ``field``."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def weights_file(model_dir: Path, family: str) -> Path:
    """The safetensors file that names a checkpoint's version (the LDM's is its last stage's)."""
    if family == "ldm" and (model_dir / "finetune").is_dir():
        model_dir = model_dir / "finetune"
    return model_dir / "model.safetensors"


def file_hash(path: Path) -> str:
    """sha256 of the weights: the model's version as the API reports it (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (following every symlink) inside ``root``."""
    try:
        path.resolve(strict=False).relative_to(root.resolve())
        return True
    except ValueError:
        return False


def contained(folder: Path, root: Path) -> None:
    """Refuse a model folder that resolves, or holds a file or link that resolves, outside ``root``."""
    if not inside(folder, root):
        raise Refused(f"{folder} resolves outside {root}: model folders must be inside the project's")
    for p in folder.rglob("*"):
        if p.is_symlink() and not inside(p, root):
            raise Refused(f"{p} is a link to outside {root}: refused")


@dataclass
class Loaded:
    generator: Generator
    family: str
    experiment: str
    version: str  # the weights' sha256 prefix


class ModelStore:
    """Each (family, experiment) is loaded on first use, once, under a lock; later requests reuse it.

    Requests share the loaded modules but nothing that changes: the modules are in eval mode and only
    run forward under no_grad, and every image's noise comes from its own ``torch.Generator(seed)``
    (spritegen/generators.py), so two requests at once cannot see each other's randomness."""

    def __init__(self, project: Path, models_dir: str, families: list[str], device: str, sampling: dict[str, Any],
                 experiments=None):
        self.project = project.resolve()
        self.root = (self.project / models_dir).resolve()
        self.cache = self.project / ".spritegen" / "serve"
        self.families, self.device, self.sampling = list(families), device, sampling
        self.experiments = experiments  # name -> commit sha (a callable; spritegen.serve.experiments)
        self._loaded: dict[tuple[str, str, str], Loaded] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def check_family(self, family: str) -> None:
        if family not in self.families:
            raise Refused(f"family {family!r} is not served; served: {', '.join(self.families)}", "family")

    def folder(self, family: str, experiment: str | None) -> Path:
        """The model folder of (family, experiment), checked; the experiment's is copied out of DVC's cache."""
        self.check_family(family)
        if experiment in (None, "", WORKSPACE):
            folder = self.root / family
            if not weights_file(folder, family).is_file():
                raise NotTrained(f"the {family} family is not trained ({weights_file(folder, family).relative_to(self.project)} "
                                 f"missing): run `{TRAIN_COMMAND[family]}`")
            contained(folder, self.root)
            return folder
        revs = self.experiments() if self.experiments else {}
        if experiment not in revs:
            known = ", ".join(sorted(revs)) or "none (dvc exp run makes one)"
            raise Refused(f"unknown experiment {experiment!r}; experiments: {known}", "experiment")
        return self._materialise(family, experiment, revs[experiment])

    def _materialise(self, family: str, experiment: str, rev: str) -> Path:
        dest = self.cache / rev / family
        if not dest.is_dir():
            from dvc.api import DVCFileSystem

            tmp = self.cache / rev / f".{family}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                fs = DVCFileSystem(str(self.project), rev=rev)
                src = f"/{self.root.relative_to(self.project).as_posix()}/{family}"
                if not fs.exists(src):
                    raise NotTrained(f"experiment {experiment!r} has no {family} model: run `dvc exp apply {experiment}` "
                                     f"then `{TRAIN_COMMAND[family]}`")
                fs.get(src, str(tmp), recursive=True)
            except NotTrained:
                raise
            except Exception as e:  # dvc raises many kinds; the cause goes to the client in words
                shutil.rmtree(tmp, ignore_errors=True)
                raise NotTrained(f"experiment {experiment!r}: its {family} model is not in the local DVC cache ({e}); "
                                 f"run `dvc exp pull origin {experiment}` or re-run it") from None
            tmp.replace(dest)
        contained(dest, self.cache)
        return dest

    def get(self, family: str, experiment: str | None = None) -> Loaded:
        experiment = experiment or WORKSPACE
        folder = self.folder(family, experiment)
        key = (family, experiment, str(folder))
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # two first requests for one model: one loads, the other waits and reuses it
            if key not in self._loaded:
                try:
                    generator = load_generator(family, folder, device=self.device, **self.sampling)
                except UserError as e:  # a broken or foreign checkpoint: the server's problem, not the request's
                    raise NotTrained(f"the {family} checkpoint cannot be loaded: {e}; retrain it: `{TRAIN_COMMAND[family]}`") from None
                version = file_hash(weights_file(folder, family))
                self._loaded[key] = Loaded(generator, family, experiment, version)
            return self._loaded[key]

    def status(self) -> dict[str, Any]:
        """Per family: trained or not (with the command), loaded or not, and the checkpoint's hash."""
        out = {}
        for family in self.families:
            loaded = next((m for k, m in self._loaded.items() if k[0] == family and k[1] == WORKSPACE), None)
            path = weights_file(self.root / family, family)
            entry: dict[str, Any] = {"trained": path.is_file(), "loaded": loaded is not None}
            if loaded:
                entry["checkpoint"] = loaded.version
            elif path.is_file():
                entry["checkpoint"] = file_hash(path)
            else:
                entry["checkpoint"] = None
                entry["train_command"] = TRAIN_COMMAND[family]
            entry["experiments_loaded"] = sorted(k[1] for k in self._loaded if k[0] == family and k[1] != WORKSPACE)
            out[family] = entry
        return out
