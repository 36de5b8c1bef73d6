"""ci/quality.sh on a toy project: scratch copy of the working tree, the ci params, `dvc repro`, the gate.

The toy's only stage writes metrics/ldm.json from params; `spritegen params`/`data fetch` are stubbed
(the real pipeline is too slow for a unit test), `spritegen gate`/`baseline` are the real commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MAKE_METRICS = textwrap.dedent("""
    import json, os, yaml
    q = yaml.safe_load(open("params.yaml"))["toy"]["quality"]
    fd = 40.0 / q
    os.makedirs("metrics", exist_ok=True)
    json.dump({"family": "ldm", "backend": "evaluator", "backend_id": "evaluator-abc", "n_generated": 64,
               "n_reference": 50, "metrics": {"fd": {"value": fd, "ci95": [fd - 1, fd + 1], "direction": "lower"}}},
              open("metrics/ldm.json", "w"))
""")

STUB = textwrap.dedent(f"""\
    #!/usr/bin/env bash
    # stands in for `spritegen params` (the ci preset: toy.quality 1.0) and `spritegen data fetch`
    case "$1" in
      params) printf 'toy:\\n  quality: 1.0\\ngate:\\n  metrics: [fd]\\n' ;;
      data) echo "data fetched" ;;
      *) exec {sys.executable} -m spritegen.cli "$@" ;;
    esac
""")


def sh(args, cwd, env=None, check=True):
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True)


@pytest.fixture
def toy(tmp_path):
    repo = tmp_path / "repo"
    (repo / "ci" / "baseline").mkdir(parents=True)
    shutil.copy(ROOT / "ci" / "quality.sh", repo / "ci" / "quality.sh")
    (repo / "make_metrics.py").write_text(MAKE_METRICS)
    (repo / "params.yaml").write_text("toy:\n  quality: 0.5\n")  # the default profile: not what ci runs
    (repo / "dvc.yaml").write_text(textwrap.dedent("""
        stages:
          evaluate:
            cmd: python make_metrics.py
            deps: [make_metrics.py]
            params: [toy.quality]
            metrics:
              - metrics/ldm.json: {cache: false}
    """))
    (repo / ".gitignore").write_text("/gate-report.md\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "spritegen").write_text(STUB)
    (bin_dir / "spritegen").chmod(0o755)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh([*git, "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    sh([*git, "add", "-A"], repo)
    sh([*git, "commit", "-qm", "toy"], repo)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{venv_bin}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    return repo, env


@pytest.mark.slow
def test_quality_sh_no_baseline_then_update_then_gate(toy):
    repo, env = toy
    run = sh(["bash", "ci/quality.sh"], repo, env, check=False)
    assert run.returncode == 2, run.stderr
    assert "no family metrics file" in run.stderr
    assert "cannot compare" in (repo / "gate-report.md").read_text()

    run = sh(["bash", "ci/quality.sh", "--update-baseline", "first ci baseline of the toy"], repo, env, check=False)
    assert run.returncode == 0, run.stderr
    base = json.loads((repo / "ci" / "baseline" / "ldm.json").read_text())
    assert base["metrics"]["fd"]["value"] == 40.0  # the ci params (quality 1.0), not the repo's params.yaml
    assert "git commit -m 'ci baseline: first ci baseline of the toy'" in run.stdout
    assert not list(Path(env["TMPDIR"]).glob("spritegen-ci.*"))  # scratch removed

    run = sh(["bash", "ci/quality.sh"], repo, env, check=False)  # same code: same numbers, passes
    assert run.returncode == 0, run.stdout + run.stderr
    assert "✅ passed" in (repo / "gate-report.md").read_text()

    # an uncommitted change that degrades the generator is gated (the working tree is copied)
    (repo / "make_metrics.py").write_text(MAKE_METRICS.replace("fd = 40.0 / q", "fd = 45.0 / q"))
    run = sh(["bash", "ci/quality.sh"], repo, env, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: 1 metric(s) regressed: ldm/fd (40 → 45" in run.stdout
    assert "❌ regressed" in (repo / "gate-report.md").read_text()
    assert json.loads((repo / "ci" / "baseline" / "ldm.json").read_text()) == base  # untouched


@pytest.mark.slow
def test_quality_sh_pipeline_failure_is_exit_3(toy):
    repo, env = toy
    (repo / "make_metrics.py").write_text("raise SystemExit('generator exploded')\n")
    run = sh(["bash", "ci/quality.sh"], repo, env, check=False)
    assert run.returncode == 3
    assert "generator exploded" in (repo / "gate-report.md").read_text()
