"""The real pipeline, end to end, on the `tiny` preset, in temporary copies of this repository.

This is what a user's `make repro` does on a fresh clone: fetch (verified against data.dvc), then
`dvc repro` - here with params.yaml replaced by the tiny preset so it runs in about a minute. Then:

* a fresh clone of that result, repeating the quick start, leaves `git status` clean: the same dvc.lock
  hashes and the same git-tracked metrics, bit for bit;
* a `dvc repro` killed (SIGKILL) in the middle of the VAE stage continues where it stopped when run
  again, and ends with the weights of an uninterrupted run; a changed param or `dvc repro -f` starts fresh.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    env_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=env_bin + os.pathsep + os.environ.get("PATH", ""))
    env.pop("DVCLIVE_TEST", None)  # the real pipeline: dvclive writes where dvc.yaml expects it
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _git_commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", message], repo)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """Tracked + untracked (not ignored) files of this checkout, as a fresh git repository on the tiny preset."""
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
    _git_commit(dst, "copy")
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
    for path in ["models/text", "models/ldm/finetune", "samples/ldm/prompts.jsonl", "samples/ldm_vae/prompts.jsonl",
                 "metrics/ldm.json", "metrics/ldm_vae.json", "metrics/summary.json", "metrics/evaluator.json"]:
        assert (repo_copy / path).exists(), path
    assert "up to date" in _run(["dvc", "status"], repo_copy).stdout
    shown = _run(["dvc", "metrics", "show"], repo_copy).stdout
    assert "metrics/ldm.json" in shown
    assert not list(repo_copy.glob("models/**/.state/*/last.json"))  # completed stages leave no run state
    assert json.loads((repo_copy / "logs/ldm/vae.json").read_text())["seconds"] > 0  # timings live in logs/
    assert json.loads((repo_copy / "logs/evaluator.json").read_text())["train_seconds"] > 0
    assert json.loads((repo_copy / "logs/sample/ldm.json").read_text())["ms_per_image"] > 0
    evaluator = json.loads((repo_copy / "metrics/evaluator.json").read_text())
    scored = json.loads((repo_copy / "metrics/ldm.json").read_text())
    for record in (evaluator, scored, json.loads((repo_copy / "samples/ldm/run.json").read_text())):
        assert record["threads"] == 2 and record["deterministic"] is True  # what the numbers were made under
    assert not [k for k in [*evaluator, *scored, *scored["evaluator"]] if "seconds" in k]


def test_a_fresh_clone_reproduces_every_hash_and_metric(repo_copy, tmp_path):
    """Commit the tiny run's dvc.lock and metrics, clone, repeat the quick start: `git status` stays clean."""
    _run(["dvc", "repro"], repo_copy)
    _git_commit(repo_copy, "tiny run")
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo_copy), str(clone)], tmp_path)
    _run(["spritegen", "data", "fetch"], clone)
    _run(["dvc", "repro"], clone)
    status = _run(["git", "status", "--porcelain"], clone).stdout
    assert status == "", f"a fresh clone's repro changed tracked files:\n{status}\n" + _run(["git", "diff", "--stat"], clone).stdout


# --- a killed `dvc repro` --------------------------------------------------------------------------------


def _set_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        for key, value in values.items():
            node = params[section]
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _kill_mid_vae(repo: Path, after_epoch: int) -> str:
    """Start `dvc repro ldm_vae`, SIGKILL it (dvc and the stage) once the VAE stage has checkpointed
    ``after_epoch`` epochs, and return what it printed."""
    proc = subprocess.Popen(["dvc", "repro", "ldm_vae"], cwd=repo, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    state = repo / "models/ldm/.state/vae"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        pointer = state / "last.json"
        if pointer.exists():
            folder = state / json.loads(pointer.read_text())["dir"]
            if (folder / "state.json").exists() and json.loads((folder / "state.json").read_text())["epoch"] >= after_epoch:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed:\n" + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return out


def _vae_weights(repo: Path) -> dict:
    from spritegen.checkpoint import load_tensors

    return load_tensors(repo / "models/ldm/vae/model.safetensors")


def test_a_killed_dvc_repro_continues_and_equals_an_uninterrupted_run(repo_copy, tmp_path):
    from torch import equal

    repo = tmp_path / "killed"
    _run(["git", "clone", "-q", str(repo_copy), str(repo)], tmp_path)
    shutil.copytree(repo_copy / "data/raw", repo / "data/raw")
    _set_params(repo, ldm={"stage_epochs.vae": 12})  # long enough to be killed in the middle
    _run(["dvc", "repro", "text"], repo)

    _kill_mid_vae(repo, after_epoch=3)
    assert not (repo / "models/ldm/vae/model.safetensors").exists()
    again = _run(["dvc", "repro", "ldm_vae"], repo)
    assert "resuming vae at epoch" in again.stdout + again.stderr
    resumed = _vae_weights(repo)
    history = (repo / "models/ldm/vae/history.csv").read_text()

    forced = _run(["dvc", "repro", "-f", "ldm_vae"], repo)  # the completed run left no state: -f starts fresh
    assert "resuming" not in forced.stdout + forced.stderr
    fresh = _vae_weights(repo)
    assert resumed.keys() == fresh.keys() and all(equal(resumed[k], fresh[k]) for k in fresh)
    assert (repo / "models/ldm/vae/history.csv").read_text() == history  # the logs too: replayed on resume

    _set_params(repo, vae={"lr": 1e-3})
    _kill_mid_vae(repo, after_epoch=2)
    _set_params(repo, vae={"lr": 2e-3})  # another param: the interrupted state is not this run's
    changed = _run(["dvc", "repro", "ldm_vae"], repo)
    out = changed.stdout + changed.stderr
    assert "discarding the state of an interrupted run" in out and "resuming" not in out
