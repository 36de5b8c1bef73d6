"""Run state: everything a stage needs to continue, saved atomically as one unit, and found again.

A stage's state folder sits *beside* its DVC output, never inside it (DVC deletes a stage's outs before it
runs the stage, so state kept there could never resume a killed ``dvc repro``)::

    models/ldm/.state/vae/        # for the output models/ldm/vae
      KEY                         # fingerprint: the stage's params, the code, the input files
      last.json                   # pointer {"dir": "last-000012"}, replaced atomically
      last-000012/                # the newest complete state: model.safetensors, optim.safetensors, state.json
      best.json  best-000009/     # the best validation weights so far
      epoch_0010.json ...         # kept checkpoints (train.checkpoint_every)

Every checkpoint is a new folder made whole first; only then does one atomic rename of its pointer make
it current, and older versions are removed after. A process killed at any moment leaves the previous
version current and loadable. On success the stage copies what it keeps into its output and removes
the state folder, so a forced re-run (``dvc repro -f``) starts fresh. A state whose KEY differs (a
param, the code or an input changed) is never resumed silently: it is discarded, or refused by
``--resume`` with the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from spritegen.checkpoint import load_tensors
from spritegen.errors import UserError
from spritegen.io import write_json


# --- atomic, versioned checkpoints ------------------------------------------------------------------


def current(root: Path, name: str) -> Path | None:
    """The folder that checkpoint ``name``'s pointer names, or None."""
    pointer = Path(root) / f"{name}.json"
    if not pointer.exists():
        return None
    folder = Path(root) / json.loads(pointer.read_text())["dir"]
    return folder if folder.is_dir() else None


def write_atomic(root: Path, name: str, write: Callable[[Path], None]) -> Path:
    """A new version of checkpoint ``name``: ``write(folder)`` fills a fresh folder, then the pointer
    ``name.json`` is replaced in one atomic rename, then older versions are removed."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    prev = current(root, name)
    version = 0 if prev is None else int(prev.name.rsplit("-", 1)[1]) + 1
    folder = root / f"{name}-{version:06d}"
    if folder.exists():  # left by a run killed before it wrote the pointer: never current, safe to replace
        shutil.rmtree(folder)
    folder.mkdir()
    write(folder)
    write_json({"dir": folder.name}, root / f"{name}.json")  # the commit point (tempfile + os.replace)
    for old in root.glob(f"{name}-*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return folder


# --- what one run state holds ---------------------------------------------------------------------------


def save_run_state(root: Path, model: dict[str, torch.Tensor], optim: dict[str, torch.Tensor], meta: dict) -> Path:
    """``last``: weights (flat ``component.param`` tensors, EMA included), optimiser moments by parameter
    name, and the scalars (epoch, step, guard and early-stopping state, log history, params)."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(folder / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in optim.items()}, str(folder / "optim.safetensors"))
        write_json(meta, folder / "state.json")

    return write_atomic(root, "last", write)


def load_run_state(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict] | None:
    folder = current(root, "last")
    if folder is None:
        return None
    meta = json.loads((folder / "state.json").read_text())
    return load_tensors(folder / "model.safetensors"), load_tensors(folder / "optim.safetensors"), meta


# --- which state belongs to this run ------------------------------------------------------------------


def fingerprint(params: dict, paths: list[Path]) -> str:
    """sha256 of the stage's params and the bytes of ``paths`` (files, or folders walked in sorted order)."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts or f.name.startswith(".") or not f.exists():
                continue
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def code_files() -> list[Path]:
    """The package's source: any change to it may change a stage's result, so it is part of the key."""
    return [Path(__file__).resolve().parents[1]]


def state_root(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / ".state" / out_dir.name


def open_state(out_dir: Path, key: str, resume: bool, fresh: bool, say: Callable[[str], None]) -> Path:
    """The state folder for this run. The same KEY: an interrupted run of the same stage, params, code
    and inputs - resumed (equal, bit for bit, to not having been interrupted). Another KEY: discarded,
    unless ``resume`` asks to continue it (then the caller compares the params). ``fresh``: discard it."""
    root = state_root(out_dir)
    key_file = root / "KEY"
    old_key = key_file.read_text().strip() if key_file.exists() else None
    if root.exists() and (fresh or (old_key != key and not resume)):
        if current(root, "last") is not None:
            say(f"discarding the state of an interrupted run in {root} "
                f"({'--fresh' if fresh else 'its params, code or inputs differ from this run'})")
        shutil.rmtree(root)
    elif old_key is not None and old_key != key:
        say(f"--resume: continuing {root} although its fingerprint differs (params, code or inputs changed)")
    root.mkdir(parents=True, exist_ok=True)
    if not (resume and old_key):
        key_file.write_text(key + "\n")
    return root


def staging(out_dir: Path) -> Path:
    """An empty folder beside ``out_dir`` where a stage assembles its output before ``publish``."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, out_dir: Path, root: Path) -> None:
    """The finished output moved into place, then the run state ``root`` removed: the stage is done, so a
    forced re-run starts fresh (and the state folder goes when it held nothing else)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(root, ignore_errors=True)
    if root.parent.is_dir() and not any(root.parent.iterdir()):
        root.parent.rmdir()


# --- params shown and compared ---------------------------------------------------------------------------


def flat_params(params: dict, prefix: str = "") -> dict[str, Any]:
    """``{"vae": {"lr": 1}}`` -> ``{"vae.lr": 1}`` (lists stay values)."""
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v
    return out


def params_diff(saved: dict, current_params: dict) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) for every dotted key whose value differs."""
    a, b = flat_params(saved), flat_params(current_params)
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_resume_params(saved: dict, current_params: dict, allow: bool, say: Callable[[str], None]) -> None:
    """``--resume`` continues with the checkpoint's settings: a param that differs is an error naming the
    key, or with ``--allow-param-changes`` a change that is applied and said."""
    diff = params_diff(saved, current_params)
    if not diff:
        return
    lines = "\n".join(f"  {k}: checkpoint {a!r} -> params.yaml {b!r}" for k, a, b in diff)
    if not allow:
        raise UserError(f"--resume: params differ from the checkpoint's:\n{lines}\n"
                        "set them back, pass --allow-param-changes to continue with the new values, or drop --resume to start fresh")
    say(f"--resume --allow-param-changes: continuing with these params changed:\n{lines}")
