"""spritegen compare: parsing real `dvc exp show --json` output, significance, renderers, end to end.

tests/fixtures/dvc_exp_show.json was captured from dvc 3.67.1 on a scratch repo whose stage writes
metrics/{ldm,cvae}.json (schema of docs/architecture.md) and metrics/summary.json from params.yaml's
train.lr/train.epochs, after `dvc exp run -S train.lr=0.002 -n lr2` and `dvc exp run -S train.epochs=5 -n ep5`.
DVC drops list values from metrics (no ci95 there): compare reads the files themselves for intervals.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spritegen.cli import main as cli
from spritegen.errors import UserError
from spritegen.evaluate.compare import (
    Run, build, differing_params, render_csv, render_html, render_markdown, render_text, runs_from_exp_show, select,
    significance,
)
from spritegen.evaluate.gate import Metric

FIXTURE = Path(__file__).parent / "fixtures" / "dvc_exp_show.json"


@pytest.fixture
def exp_show() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def shown_only(run: Run, repo: Path) -> dict:
    """The metrics as dvc exp show gives them (no ci95)."""
    return run.metric_files


def with_ci(run: Run, repo: Path) -> dict:
    """Like reading the files: add a ci95 of ±2 (fd) and ±0.01 (clip_score) around each value."""
    files = copy.deepcopy(run.metric_files)
    for data in files.values():
        for name, m in (data.get("metrics") or {}).items():
            h = 2.0 if name == "fd" else 0.01
            m["ci95"] = [m["value"] - h, m["value"] + h]
    return files


def test_parse_real_exp_show(exp_show):
    runs, notes = runs_from_exp_show(exp_show)
    assert [(r.label, r.kind) for r in runs] == [
        ("workspace", "workspace"), ("main (1fa0154)", "baseline"), ("ep5", "experiment"), ("lr2", "experiment")]
    assert notes == []
    lr2 = runs[3]
    assert lr2.parent == runs[1].rev and lr2.rev.startswith("4a67ef8")
    assert lr2.params["train.lr"] == 0.002 and lr2.params["train.epochs"] == 3
    assert set(lr2.metric_files) == {"metrics/ldm.json", "metrics/cvae.json", "metrics/summary.json"}
    # the DVC fact compare works around: list values (ci95) are not in exp show output
    assert "ci95" not in lr2.metric_files["metrics/ldm.json"]["metrics"]["fd"]
    assert lr2.metric_files["metrics/ldm.json"]["metrics"]["fd"]["value"] == 39.0


def test_failed_and_queued_experiments_are_skipped_with_a_note(exp_show):
    data = copy.deepcopy(exp_show)
    exps = data[1]["experiments"]
    exps[0]["executor"] = {"state": "failed", "name": None, "local": None}
    exps[1]["revs"][0]["error"] = {"type": "CheckoutError", "msg": "broken"}
    runs, notes = runs_from_exp_show(data)
    assert [r.label for r in runs] == ["workspace", "main (1fa0154)"]
    assert notes == ["ep5: failed, not shown", "lr2: skipped (broken)"]


def test_select_reference_and_unknown(exp_show):
    runs, _ = runs_from_exp_show(exp_show)
    shown, ref = select(runs, ["lr2"], None)
    assert ref.label == "main (1fa0154)" and [r.label for r in shown] == ["main (1fa0154)", "lr2", "workspace"]
    shown, ref = select(runs, ["4a67ef8", "ep5"], "ep5")  # a rev prefix works; --reference picks the column
    assert ref.label == "ep5" and [r.label for r in shown] == ["ep5", "lr2", "workspace"]
    with pytest.raises(UserError, match="no run named 'nope'; runs: workspace, main"):
        select(runs, ["nope"], None)


def test_significance_is_the_gate_ci_rule():
    ref = Metric(40.0, "lower", (37.0, 43.0))  # half-width 3; with another of 4: 5
    assert significance(ref, Metric(34.0, "lower", (30.0, 38.0))) == "better"
    assert significance(ref, Metric(46.0, "lower", (42.0, 50.0))) == "worse"
    assert significance(ref, Metric(44.0, "lower", (40.0, 48.0))) == "same"   # intervals overlap-ish: 4 < 5
    assert significance(ref, Metric(44.0, "lower")) == "worse"                # 4 > 3 (only ref has an interval)
    assert significance(Metric(40.0, "lower"), Metric(44.0, "lower")) == ""   # nothing to judge by
    assert significance(Metric(0.2, "higher", (0.19, 0.21)), Metric(0.25, "higher", (0.24, 0.26))) == "better"


def test_differing_params(exp_show):
    runs, _ = runs_from_exp_show(exp_show)
    params = differing_params(runs)
    assert params == [("train.epochs", ["5", "3", "5", "3"]), ("train.lr", ["0.002", "0.001", "0.002", "0.002"])]
    runs[0].params["new.key"] = "x"
    assert ("new.key", ["x", "—", "—", "—"]) in differing_params(runs)


def test_build_marks_significant_differences(exp_show):
    shown, ref, rows, params, notes = build(exp_show, [], None, ["fd", "clip_score"], read=with_ci)
    assert [r.label for r in shown] == ["main (1fa0154)", "ep5", "lr2", "workspace"]
    by = {(r.family, r.metric): r for r in rows}
    assert list(by) == [("cvae", "fd"), ("cvae", "clip_score"), ("ldm", "fd"), ("ldm", "clip_score")]
    # clip_score 0.23 -> 0.25 with ±0.01 each side: 0.02 > 0.0141: better; fd 38 -> 39 with ±2: within
    assert [k for _, k in by[("ldm", "clip_score")].cells] == ["", "better", "same", "better"]
    assert [k for _, k in by[("ldm", "fd")].cells] == ["", "same", "same", "same"]
    assert notes == []

    md = render_markdown(shown, ref, rows, params, notes)
    assert "| main (1fa0154) (ref) | ep5 | lr2 | workspace |" in md
    assert "| ldm | clip_score ↑ | 0.23 ±0.01 | **0.25 ±0.01 ▲** | 0.23 ±0.01 | **0.25 ±0.01 ▲** |" in md
    assert "| `train.lr` | 0.001 | 0.002 | 0.002 | 0.002 |" in md
    text = render_text(shown, ref, rows, params, notes)
    assert "params that differ" in text and "0.25 ±0.01 ▲" in text
    table = list(csv.DictReader(io.StringIO(render_csv(shown, ref, rows, params, notes))))
    row = next(r for r in table if r["run"] == "ep5" and r["family"] == "ldm" and r["name"] == "clip_score")
    assert row == {"run": "ep5", "rev": shown[1].rev, "kind": "metric", "family": "ldm", "name": "clip_score",
                   "value": "0.25", "ci_low": "0.24", "ci_high": "0.26", "direction": "higher",
                   "vs_reference": "better"}
    assert any(r["kind"] == "param" and r["name"] == "train.epochs" for r in table)
    page = render_html(shown, ref, rows, params, notes)
    assert page.startswith("<!doctype html>") and '<td class="better">0.25 ±0.01 ▲</td>' in page


def test_build_without_intervals_marks_nothing(exp_show):
    _, _, rows, _, _ = build(exp_show, [], None, None, read=shown_only)
    assert {k for r in rows for _, k in r.cells} == {""}
    assert [r.metric for r in rows] == ["fd", "clip_score"] * 2  # default (gate) metrics present in the data


def test_build_notes_missing_metrics_and_no_experiments(exp_show):
    _, _, rows, _, notes = build(exp_show, [], None, ["fd", "kid"], read=shown_only)
    assert notes == ["not in any run: kid"] and {r.metric for r in rows} == {"fd"}
    data = copy.deepcopy(exp_show)
    data[1]["experiments"] = None
    shown, _, _, _, notes = build(data, [], None, None, read=shown_only)
    assert "no experiments yet" in notes[0] and [r.label for r in shown] == ["main (1fa0154)", "workspace"]


def test_no_metrics_is_an_error(exp_show):
    data = copy.deepcopy(exp_show)
    for entry in [data[0], data[1], *(r for e in data[1]["experiments"] for r in e["revs"])]:
        entry["data"]["metrics"] = {}
    with pytest.raises(UserError, match="no metrics/<family>.json in any run"):
        build(data, [], None, None, read=shown_only)


def test_no_runs_is_an_error():
    with pytest.raises(UserError, match="no runs"):
        build([], [], None, None, read=shown_only)  # what dvc exp show --json prints before the first commit


def test_not_a_dvc_repository(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["compare"]) == 2
    assert "not in a DVC repository" in capsys.readouterr().err


# --- end to end on a scratch git + dvc repository ----------------------------------------------------

MAKE_METRICS = textwrap.dedent("""
    import json, yaml
    p = yaml.safe_load(open("params.yaml"))["train"]
    fd = 40.0 + 1000 * p["lr"]
    d = {"family": "ldm", "backend": "evaluator", "backend_id": "evaluator-abc", "n_generated": 64,
         "n_reference": 50, "metrics": {"fd": {"value": fd, "ci95": [fd - 0.5, fd + 0.5], "direction": "lower"}}}
    json.dump(d, open("metrics/ldm.json", "w"))
""")


@pytest.mark.slow
def test_end_to_end_compare(tmp_path, monkeypatch, capsys):
    def run(*args):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, text=True)

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    dvc = [sys.executable, "-m", "dvc"]
    run(*git, "init", "-q")
    run(*dvc, "init", "-q")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.001\n")
    (tmp_path / "make_metrics.py").write_text(MAKE_METRICS)
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          evaluate:
            cmd: {shutil.which('python') or sys.executable} make_metrics.py
            deps: [make_metrics.py]
            params: [train.lr]
            metrics:
              - metrics/ldm.json: {{cache: false}}
    """))
    run(*dvc, "repro", "-q")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "base")
    run(*git, "branch", "-m", "main")
    run(*dvc, "exp", "run", "-q", "-S", "train.lr=0.003", "-n", "worse-lr")

    monkeypatch.chdir(tmp_path)
    assert cli(["compare", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    fd = {r["run"]: r for r in rows if r["kind"] == "metric"}
    ref = next(k for k in fd if k.startswith("main ("))
    assert set(fd) == {ref, "worse-lr", "workspace"}
    assert float(fd[ref]["value"]) == pytest.approx(41.0) and fd[ref]["ci_low"] == "40.5"  # ci95 via git show
    assert float(fd["worse-lr"]["value"]) == pytest.approx(43.0) and fd["worse-lr"]["vs_reference"] == "worse"
    assert any(r["kind"] == "param" and r["name"] == "train.lr" for r in rows)
    out = tmp_path / "report" / "compare.md"
    assert cli(["compare", "worse-lr", "--format", "markdown", "--out", str(out)]) == 0
    assert "**43 ±0.5 ▼**" in out.read_text()
