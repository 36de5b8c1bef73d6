"""Verify a materialised folder against the hash that a ``.dvc`` file pins.

``dvc repro`` silently accepts (and re-pins) a data source whose content changed, so ``spritegen data
fetch`` checks the bytes itself: the folder hash is computed exactly as DVC 3 computes a ``.dir``
object (md5 of the JSON list of ``{"md5", "relpath"}`` entries sorted by path), and compared with the
``md5`` that ``data.dvc`` records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from spritegen.errors import UserError


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(folder: str | Path) -> tuple[str, int, int]:
    """(DVC ``.dir`` md5, total size in bytes, number of files) of a folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()} for p in files]
    entries.sort(key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return digest + ".dir", sum(p.stat().st_size for p in files), len(files)


def pinned_md5(dvc_file: str | Path, out_path: str | Path) -> str | None:
    """The md5 that ``dvc_file`` pins for ``out_path`` (None when the file or the out is absent)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        return None
    data = yaml.safe_load(dvc_file.read_text()) or {}
    base = dvc_file.parent
    for out in data.get("outs", []):
        if (base / out.get("path", "")).resolve() == Path(out_path).resolve():
            return out.get("md5")
    return None


def verify_pin(folder: str | Path, dvc_file: str | Path = "data.dvc") -> str:
    """Raise ``UserError`` when ``folder`` differs from what ``dvc_file`` pins; return the md5."""
    expected = pinned_md5(dvc_file, folder)
    actual, size, n = dir_md5(folder)
    if expected is not None and actual != expected:
        raise UserError(
            f"{folder} does not match {dvc_file}: got {actual} ({n} files, {size} bytes), pinned {expected}. "
            "The source package changed or the fetch is not deterministic; nothing downstream was run."
        )
    return actual
