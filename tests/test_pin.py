"""data.dvc verification: our folder hash must equal DVC's, and a changed byte must be refused."""

import shutil
import subprocess

import pytest

from spritegen.data.pin import dir_md5, verify_pin
from spritegen.errors import UserError


def _make(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"\x89PNG fake")
    (folder / "sprites.json").write_text('{"a": 1}\n')


def test_dir_md5_equals_dvc_add(tmp_path):
    if shutil.which("dvc") is None:
        pytest.skip("dvc not on PATH")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    _make(tmp_path / "data" / "raw")
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=tmp_path, check=True)
    pinned = (tmp_path / "data" / "raw.dvc").read_text()
    digest, size, n = dir_md5(tmp_path / "data" / "raw")
    assert f"md5: {digest}" in pinned
    assert n == 2 and f"size: {size}" in pinned


def test_verify_pin_refuses_changed_bytes(tmp_path):
    raw = tmp_path / "data" / "raw"
    _make(raw)
    digest, _, _ = dir_md5(raw)
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {digest}\n  hash: md5\n  path: data/raw\n")
    assert verify_pin(raw, tmp_path / "data.dvc") == digest
    (raw / "sprites.json").write_text('{"a": 2}\n')
    with pytest.raises(UserError, match="does not match"):
        verify_pin(raw, tmp_path / "data.dvc")
