"""Each completed trial as a DVC experiment: ``dvc exp show`` lists it with its params and metrics.

    spritegen sweep run kl_weight --study cvae            # inside a git + DVC repository: on by default
    dvc exp show                                          # a row per completed trial: <study>-t<NNNN>

After a trial completes, its worker writes, under one lock, into ``sweeps_exp/<study>/`` (not git-ignored,
unlike ``sweeps_out/``: DVC refuses a git-ignored dvc.yaml; commit or ignore it as you like, DVC only needs
it readable while it saves):
* ``params.yaml``: the trial's overrides in params.yaml's shape (the same as ``trials/NNNN/params.yaml``);
* ``metrics.json``: the objectives and every metric of its last scored epoch, its number and state;
* ``plots/*.png``: the study's plots as they are after this trial (``write_plots``);
* ``dvc.yaml``: declares them all (top-level ``params``/``metrics``/``plots``, as dvclive does),
then runs ``dvc exp save --include-untracked <those files>`` (``Repo.experiments.save``) with the
experiment named ``<study>-t<NNNN>``.

Why a lock: only one DVC command may hold a workspace at a time (DVC's own lock fails instead of
waiting), and the three files are shared by every worker of the study; so the files are written and the
experiment saved by one worker at a time, waiting on ``.dvc/tmp/spritegen-exp.lock``.

``dvc exp save`` commits the workspace as it is: DVC first commits the pipeline's stages (``dvc commit
--force``) unless given targets, which would rewrite the project's dvc.lock from whatever the workspace
holds. The save is therefore limited to ``sweeps_exp/<study>/dvc.yaml``, which has no stages, so the project's
dvc.lock and cache are never touched; the experiment's commit holds the workspace's git-tracked files
as they are plus the three files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Callable

import yaml

from spritegen.errors import UserError

LOCK = Path(".dvc") / "tmp" / "spritegen-exp.lock"
EXP_DIR = Path("sweeps_exp")  # in the repository and not git-ignored: DVC reads no ignored dvc.yaml


def dvc_root(path: Path) -> Path | None:
    """The git + DVC repository holding ``path`` (its root), or None: experiments need both."""
    path = path.resolve()
    for folder in [path, *path.parents]:
        if (folder / ".dvc").is_dir():
            return folder if (folder / ".git").exists() or any((p / ".git").exists() for p in folder.parents) else None
    return None


@contextlib.contextmanager
def workspace_lock(root: Path):
    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def experiment_name(study: str, number: int) -> str:
    return f"{study}-t{number:04d}"


def record_trial(root: Path, study: str, number: int, params: dict, metrics: dict,
                 plots: Callable[[Path], object] | None = None) -> str:
    """Save trial ``number`` as a DVC experiment of the repository at ``root``; returns its name.
    ``params``: nested params.yaml overrides; ``metrics``: name -> value; ``plots(folder)`` writes the
    study's PNGs as they are now."""
    from dvc.repo import Repo

    rel = EXP_DIR / study
    folder = root / rel
    name = experiment_name(study, number)
    with workspace_lock(root):
        repo = Repo(str(root))
        try:
            if repo.scm.is_ignored(str(folder / "dvc.yaml")):  # DVC refuses a git-ignored dvc.yaml
                raise UserError(f"{rel}/dvc.yaml is git-ignored, and DVC reads no ignored dvc.yaml: un-ignore {EXP_DIR}/ "
                                "or run the sweep with --no-dvc-exp")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            (folder / "metrics.json").write_text(json.dumps({"trial": number, **metrics}, indent=1, sort_keys=True,
                                                              default=float))
            if plots is not None:
                plots(folder / "plots")
            pngs = sorted(p.name for p in (folder / "plots").glob("*.png"))
            spec = {"params": ["params.yaml"], "metrics": ["metrics.json"], **({"plots": [f"plots/{p}" for p in pngs]} if pngs else {})}
            (folder / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
            files = [str(rel / f) for f in ("params.yaml", "metrics.json", "dvc.yaml", *[f"plots/{p}" for p in pngs])]
            # targets: commit no pipeline stage (the dvc.yaml above has none); the project's dvc.lock stays as it is
            repo.experiments.save(name=name, targets=[str(rel / "dvc.yaml")], include_untracked=files, force=True,
                                  message=f"spritegen sweep: {study} trial {number}")
        finally:
            repo.close()
    return name
