"""The real pipeline, end to end, on the `tiny` preset, in a temporary copy of this repository.

This is what a user's `make repro` does on a fresh clone: fetch (verified against data.dvc), then
`dvc repro` — here with params.yaml replaced by the tiny preset so it runs in about a minute.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=env_bin + os.pathsep + os.environ.get("PATH", ""))
    env.pop("DVCLIVE_TEST", None)  # the real pipeline: dvclive writes where dvc.yaml expects it
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """Tracked + untracked (not ignored) files of this checkout, as a fresh git repository."""
    if shutil.which("git") is None:
        pytest.skip("git not available")
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    _run(["git", "init", "-q"], dst)
    tiny = _run(["spritegen", "params", "--preset", "tiny"], dst).stdout
    (dst / "params.yaml").write_text(tiny)
    _run(["git", "add", "-A"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dst)
    _run(["spritegen", "data", "fetch"], dst)
    return dst


def test_data_stages_reproduce_and_are_clean(repo_copy):
    _run(["dvc", "repro", "prepare"], repo_copy)
    assert (repo_copy / "data" / "prepared" / "train.safetensors").exists()
    assert (repo_copy / "data" / "prepared" / "preview.png").exists()
    status = _run(["dvc", "status", "metadata", "prepare"], repo_copy).stdout
    assert "up to date" in status, status
    # data.dvc still pins the same content (fetch was verified, repro did not re-pin it)
    assert subprocess.run(["git", "diff", "--quiet", "data.dvc"], cwd=repo_copy).returncode == 0


def test_whole_pipeline_tiny(repo_copy):
    _run(["dvc", "repro"], repo_copy)
    for path in ["models/ldm/finetune", "samples/ldm/prompts.jsonl", "samples/ldm_vae/prompts.jsonl", "metrics/ldm.json",
                 "metrics/ldm_vae.json", "metrics/summary.json", "metrics/evaluator.json"]:
        assert (repo_copy / path).exists(), path
    assert "up to date" in _run(["dvc", "status"], repo_copy).stdout
    shown = _run(["dvc", "metrics", "show"], repo_copy).stdout
    assert "metrics/ldm.json" in shown


def _without_timings(data):
    """Metrics files also record how long a stage took: everything else must be identical."""
    if isinstance(data, dict):
        return {k: _without_timings(v) for k, v in data.items() if "seconds" not in k}
    if isinstance(data, list):
        return [_without_timings(v) for v in data]
    return data


def _metrics(repo: Path) -> dict:
    return {p.name: _without_timings(json.loads(p.read_text())) for p in sorted((repo / "metrics").glob("*.json"))}


def test_pipeline_is_deterministic_on_cpu(repo_copy):
    """Same commit, same numbers: the quality gate compares like with like only if this holds."""
    _run(["dvc", "repro"], repo_copy)
    first = _metrics(repo_copy)
    _run(["dvc", "repro", "--force"], repo_copy)
    second = _metrics(repo_copy)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"metrics/{name} differs between two identical runs"
