"""The quality gate: direction and tolerance rules, every error case, baselines from folders, files and git."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from spritegen.cli import main as cli
from spritegen.config import ConfigError, from_dict
from spritegen.evaluate.gate import (
    GateConfig, GateError, Metric, ci_tolerance, gate, judge, load_baseline, load_metrics_dir, parse_family,
    tolerance,
)


def family(name="ldm", backend_id="evaluator-3f2a", n_generated=64, n_reference=50, **metrics) -> dict:
    """A metrics/<family>.json document; each metric is (value, direction[, (lo, hi)])."""
    out = {}
    for k, spec in metrics.items():
        value, direction, *ci = spec
        out[k] = {"value": value, "direction": direction, "floor": 0.0, "baselines": {}}
        if ci:
            out[k]["ci95"] = list(ci[0])
    return {"family": name, "backend": "evaluator", "backend_id": backend_id, "n_generated": n_generated,
            "n_reference": n_reference, "metrics": out}


def write(folder: Path, *docs: dict, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in docs:
        (folder / f"{d['family']}.json").write_text(json.dumps(d))
    for name, d in (extra or {}).items():
        (folder / name).write_text(json.dumps(d))
    return folder


def fams(*docs: dict) -> dict:
    return {d["family"]: parse_family(d, d["family"]) for d in docs}


CFG = GateConfig(metrics=["fd", "coverage"])


# --- direction and tolerance --------------------------------------------------------------------------


@pytest.mark.parametrize("direction,base,cur,expected", [
    ("lower", 40.0, 45.0, "regressed"),
    ("lower", 40.0, 35.0, "improved"),
    ("higher", 0.5, 0.4, "regressed"),
    ("higher", 0.5, 0.6, "improved"),
    ("lower", 40.0, 41.0, "ok"),     # within the tolerance of 2
    ("higher", 0.5, 0.5, "ok"),
    ("lower", 40.0, 42.0, "ok"),     # exactly at the tolerance is not a regression
])
def test_judge_direction(direction, base, cur, expected):
    tol = 2.0 if direction == "lower" else 0.05
    assert judge(base, cur, direction, tol) == expected


def test_ci_tolerance_combines_half_widths_in_quadrature():
    b = Metric(40.0, "lower", (37.0, 43.0))   # half-width 3
    c = Metric(41.0, "lower", (37.0, 45.0))   # half-width 4
    assert ci_tolerance(b, c) == pytest.approx(5.0)
    assert ci_tolerance(b, Metric(41.0, "lower")) == pytest.approx(3.0)  # a side without an interval is exact
    assert ci_tolerance(Metric(1.0, "lower"), Metric(2.0, "lower")) is None


def test_ci_based_regression_and_pass():
    base = family(fd=(40.0, "lower", (37.0, 43.0)), coverage=(0.8, "higher", (0.75, 0.85)))
    within = family(fd=(44.9, "lower", (41.0, 49.0)), coverage=(0.76, "higher", (0.71, 0.81)))   # tol 5, 0.0707
    beyond = family(fd=(45.1, "lower", (41.1, 49.1)), coverage=(0.72, "higher", (0.67, 0.77)))
    r = gate(fams(base), fams(within), GateConfig(metrics=["fd", "coverage"], tolerance="ci"))
    assert [c.status for c in r.checks] == ["ok", "ok"] and r.exit_code == 0
    r = gate(fams(base), fams(beyond), GateConfig(metrics=["fd", "coverage"], tolerance="ci"))
    assert [c.status for c in r.checks] == ["regressed", "regressed"] and r.exit_code == 1
    assert r.checks[0].tolerance == pytest.approx(5.0) and r.checks[0].tolerance_from == "ci"
    assert r.checks[1].tolerance == pytest.approx(math.hypot(0.05, 0.05))


def test_margin_absolute_and_relative():
    b, c = Metric(40.0, "lower"), Metric(43.0, "lower")
    cfg = GateConfig(metrics=["fd"], tolerance="margin", margins={"fd": 2.0})
    assert tolerance("fd", b, c, cfg) == (2.0, "margin")
    cfg = GateConfig(metrics=["fd"], tolerance="margin", margins={"fd": 2.0}, relative_margin=0.1)
    assert tolerance("fd", b, c, cfg) == (4.0, "margin")        # 10% of |40| is larger than 2
    assert gate(fams(family(fd=(40.0, "lower"))), fams(family(fd=(43.0, "lower"))), cfg).checks[0].status == "ok"
    cfg = GateConfig(metrics=["fd"], tolerance="margin", margins={"fd": 2.0})
    assert gate(fams(family(fd=(40.0, "lower"))), fams(family(fd=(43.0, "lower"))), cfg).exit_code == 1


def test_margin_mode_ignores_the_interval():
    b, c = Metric(40.0, "lower", (30.0, 50.0)), Metric(43.0, "lower", (33.0, 53.0))
    assert tolerance("fd", b, c, GateConfig(tolerance="margin", margins={"fd": 1.0})) == (1.0, "margin")


def test_ci_or_margin_takes_the_larger():
    b, c = Metric(40.0, "lower", (39.0, 41.0)), Metric(43.0, "lower", (42.0, 44.0))  # ci tol = sqrt(2)
    assert tolerance("fd", b, c, GateConfig(margins={"fd": 5.0})) == (5.0, "margin")
    tol, how = tolerance("fd", b, c, GateConfig(margins={"fd": 0.5}))
    assert how == "ci" and tol == pytest.approx(math.sqrt(2))
    # no interval on either side: the margin alone; no margin either: zero, and the result says so
    assert tolerance("fd", Metric(1.0, "lower"), Metric(1.0, "lower"), GateConfig()) == (0.0, "none")


def test_ci_mode_without_interval_is_an_error():
    with pytest.raises(GateError, match="ldm/fd.*ci95"):
        gate(fams(family(fd=(40.0, "lower"))), fams(family(fd=(40.0, "lower"))),
             GateConfig(metrics=["fd"], tolerance="ci"))


def test_improvement_passes_and_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base", family(fd=(40.0, "lower", (39.0, 41.0)), coverage=(0.5, "higher", (0.48, 0.52))))
    write(tmp_path / "cur", family(fd=(30.0, "lower", (29.0, 31.0)), coverage=(0.5, "higher", (0.48, 0.52))))
    md = tmp_path / "report.md"
    code = cli(["gate", "--baseline", "base", "--current", "cur", "--metrics", "fd", "coverage", "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 0
    assert "improved" in out and "ldm/fd" in out and "passed" in out
    assert "✅ improved" in md.read_text() and "Quality gate: ✅ passed" in md.read_text()


def test_regression_fails_naming_the_metric(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base", family(fd=(40.0, "lower", (39.0, 41.0)), coverage=(0.5, "higher", (0.48, 0.52))),
          family("cvae", fd=(60.0, "lower", (58.0, 62.0)), coverage=(0.4, "higher", (0.38, 0.42))))
    write(tmp_path / "cur", family(fd=(40.5, "lower", (39.5, 41.5)), coverage=(0.3, "higher", (0.28, 0.32))),
          family("cvae", fd=(60.0, "lower", (58.0, 62.0)), coverage=(0.4, "higher", (0.38, 0.42))))
    md = tmp_path / "r" / "report.md"
    code = cli(["gate", "--baseline", "base", "--current", "cur", "--metrics", "fd", "coverage", "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: 1 metric(s) regressed: ldm/coverage" in out
    assert "regressed" in out and "folder base" in out
    text = md.read_text()
    assert "❌ FAILED" in text and "| ldm | **coverage** |" in text


def test_params_gate_section_is_used(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base", family(fd=(40.0, "lower")))
    write(tmp_path / "cur", family(fd=(41.0, "lower")))
    (tmp_path / "params.yaml").write_text("gate:\n  metrics: [fd]\n  tolerance: margin\n  margins: {fd: 2.0}\n")
    assert cli(["gate", "--baseline", "base", "--current", "cur"]) == 0
    (tmp_path / "params.yaml").write_text("gate:\n  metrics: [fd]\n  tolerance: margin\n  margins: {fd: 0.5}\n")
    assert cli(["gate", "--baseline", "base", "--current", "cur"]) == 1


def test_gate_config_is_validated():
    with pytest.raises(ConfigError, match="gate: unknown key"):
        from_dict(GateConfig, {"metric": ["fd"]}, "gate")
    with pytest.raises(ConfigError, match="gate.tolerance"):
        from_dict(GateConfig, {"tolerance": "loose"}, "gate")
    with pytest.raises(ConfigError, match="gate.margins.fd"):
        from_dict(GateConfig, {"margins": {"fd": -1}}, "gate")
    with pytest.raises(ConfigError, match="gate.metrics"):
        from_dict(GateConfig, {"metrics": []}, "gate")
    assert from_dict(GateConfig, {"margins": {"fd": 2}}, "gate").margins == {"fd": 2.0}


# --- errors: exit code 2, naming the file/metric/family ---------------------------------------------------


def run_error(tmp_path, capsys, monkeypatch, args) -> str:
    monkeypatch.chdir(tmp_path)
    assert cli(["gate", *args]) == 2
    return capsys.readouterr().err


def test_error_missing_baseline(tmp_path, capsys, monkeypatch):
    write(tmp_path / "cur", family(fd=(40.0, "lower")))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "nowhere", "--current", "cur", "--metrics", "fd"])
    assert "nowhere" in err and ("git repository" in err or "git revision" in err)


def test_error_empty_baseline_folder(tmp_path, capsys, monkeypatch):
    write(tmp_path / "base", extra={"BASELINE.json": {"reason": "x"}})
    write(tmp_path / "cur", family(fd=(40.0, "lower")))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "no family metrics file" in err and "--update-baseline" in err


def test_error_unreadable_baseline(tmp_path, capsys, monkeypatch):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "ldm.json").write_text("{not json")
    write(tmp_path / "cur", family(fd=(40.0, "lower")))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "ldm.json: not valid JSON" in err


@pytest.mark.parametrize("side", ["baseline", "current"])
def test_error_metric_missing(tmp_path, capsys, monkeypatch, side):
    full, part = family(fd=(40.0, "lower"), kid=(0.1, "lower")), family(fd=(40.0, "lower"))
    write(tmp_path / "base", part if side == "baseline" else full)
    write(tmp_path / "cur", full if side == "baseline" else part)
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd", "kid"])
    assert f"ldm/kid: missing in the {side}" in err


def test_error_null_metric_counts_as_missing(tmp_path, capsys, monkeypatch):
    cur = family(fd=(40.0, "lower"))
    cur["metrics"]["fd"]["value"] = None
    write(tmp_path / "base", family(fd=(40.0, "lower")))
    write(tmp_path / "cur", cur)
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "ldm/fd: missing in the current" in err


def test_error_backend_id_differs(tmp_path, capsys, monkeypatch):
    write(tmp_path / "base", family(fd=(40.0, "lower"), backend_id="evaluator-aaaa"))
    write(tmp_path / "cur", family(fd=(40.0, "lower"), backend_id="evaluator-bbbb"))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "backend_id differs" in err and "evaluator-aaaa" in err and "evaluator-bbbb" in err


def test_error_metric_backend_id_differs():
    # suite.py writes a backend_id per metric (alignment metrics use the text-image model, pixel metrics "pixels")
    base, cur = family(clip_score=(0.2, "higher")), family(clip_score=(0.2, "higher"))
    base["metrics"]["clip_score"]["backend_id"] = "openclip-aaaa"
    cur["metrics"]["clip_score"]["backend_id"] = "evaluator-3f2a"
    with pytest.raises(GateError, match="ldm/clip_score: backend_id differs: baseline openclip-aaaa, current evaluator-3f2a"):
        gate(fams(base), fams(cur), GateConfig(metrics=["clip_score"]))


def test_null_ci95_is_no_interval():
    base = family(fd=(40.0, "lower"))
    base["metrics"]["fd"]["ci95"] = None  # suite.py writes null when the bootstrap is off
    assert parse_family(base, "x").metrics["fd"].ci95 is None


def test_error_sample_count_differs(tmp_path, capsys, monkeypatch):
    write(tmp_path / "base", family(fd=(40.0, "lower"), n_generated=64))
    write(tmp_path / "cur", family(fd=(40.0, "lower"), n_generated=256))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "n_generated differs: baseline 64, current 256" in err


def test_error_family_missing(tmp_path, capsys, monkeypatch):
    write(tmp_path / "base", family(fd=(40.0, "lower")), family("gan", fd=(90.0, "lower")))
    write(tmp_path / "cur", family(fd=(40.0, "lower")))
    err = run_error(tmp_path, capsys, monkeypatch, ["--baseline", "base", "--current", "cur", "--metrics", "fd"])
    assert "family 'gan': missing from the current metrics" in err


def test_error_configured_family_missing_from_baseline():
    cfg = GateConfig(metrics=["fd"], families=["ldm", "gan"])
    both = fams(family(fd=(40.0, "lower")), family("gan", fd=(90.0, "lower")))
    with pytest.raises(GateError, match="family 'gan': missing from the baseline"):
        gate(fams(family(fd=(40.0, "lower"))), both, cfg)


def test_all_problems_are_listed_at_once():
    base = fams(family(fd=(40.0, "lower"), n_generated=64))
    cur = fams(family(kid=(0.1, "lower"), n_generated=32, backend_id="other"))
    with pytest.raises(GateError) as e:
        gate(base, cur, GateConfig(metrics=["fd", "kid"]))
    msg = str(e.value)
    for part in ("backend_id differs", "n_generated differs", "ldm/fd: missing in the current",
                 "ldm/kid: missing in the baseline"):
        assert part in msg


def test_malformed_family_file_is_an_error_other_json_is_ignored(tmp_path):
    bad = family(fd=(40.0, "lower"))
    bad["metrics"]["fd"]["direction"] = "smaller"
    del bad["n_generated"]
    write(tmp_path / "m", bad)
    with pytest.raises(GateError, match=r"ldm.json: not a valid family metrics file.*n_generated.*smaller"):
        load_metrics_dir(tmp_path / "m")
    write(tmp_path / "ok", family(fd=(40.0, "lower")),
          extra={"evaluator.json": {"retrieval_top1": 0.3}, "summary.json": {"families": ["ldm"]}})
    fam, ignored = load_metrics_dir(tmp_path / "ok")
    assert list(fam) == ["ldm"] and len(ignored) == 2


def test_new_family_is_noted_not_gated():
    r = gate(fams(family(fd=(40.0, "lower"))), fams(family(fd=(40.0, "lower")), family("gan", fd=(1.0, "lower"))),
             GateConfig(metrics=["fd"]))
    assert r.exit_code == 0 and any("gan" in n for n in r.notes)


def test_single_json_file_baseline(tmp_path):
    write(tmp_path / "m", family(fd=(40.0, "lower")))
    fam, _, what = load_baseline(str(tmp_path / "m" / "ldm.json"))
    assert list(fam) == ["ldm"] and what.startswith("file ")


# --- baseline from a git revision -------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    git(tmp_path, "init", "-q")
    write(tmp_path / "metrics", family(fd=(40.0, "lower", (39.0, 41.0))), extra={"summary.json": {"a": 1}})
    write(tmp_path / "ci" / "baseline", family(fd=(50.0, "lower", (49.0, 51.0))))
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "baseline")
    git(tmp_path, "tag", "v1")
    return tmp_path


def test_baseline_from_git_revision(repo, capsys, monkeypatch):
    write(repo / "metrics", family(fd=(48.0, "lower", (47.0, 49.0))))  # the working tree got worse
    monkeypatch.chdir(repo)
    fam, ignored, what = load_baseline("v1")
    assert fam["ldm"].metrics["fd"].value == 40.0 and ignored == ["v1:metrics/summary.json"]
    assert what.startswith("git revision v1 (") and "metrics/*.json" in what
    assert cli(["gate", "--baseline", "HEAD", "--metrics", "fd"]) == 1
    assert "git revision HEAD" in capsys.readouterr().out
    # REV:FOLDER reads another committed folder: the ci baseline as of that commit (fd 50 -> 48: better)
    assert cli(["gate", "--baseline", "v1:ci/baseline", "--metrics", "fd"]) == 0


def test_baseline_git_revision_errors(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert cli(["gate", "--baseline", "no-such-branch", "--metrics", "fd"]) == 2
    assert "no such file or folder, and not a git revision" in capsys.readouterr().err
    assert cli(["gate", "--baseline", "v1:nothing/here", "--metrics", "fd"]) == 2
    assert "no nothing/here/*.json committed" in capsys.readouterr().err


# --- baseline update ------------------------------------------------------------------------------------


def test_baseline_update_is_deliberate(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert cli(["baseline", "update", "--reason", "short", "--current", "metrics"]) == 2
    assert "--reason" in capsys.readouterr().err

    write(repo / "run", family(fd=(30.0, "lower", (29.0, 31.0))), family("gan", fd=(80.0, "lower")),
          extra={"evaluator.json": {"top1": 0.2}})
    assert cli(["baseline", "update", "--reason", "new U-Net default; FD drops 50 -> 30",
                "--current", "run", "--params", str(repo / "none.yaml")]) == 2  # params file must exist
    capsys.readouterr()
    (repo / "p.yaml").write_text("gate:\n  metrics: [fd]\n")
    assert cli(["baseline", "update", "--reason", "new U-Net default; FD drops 50 -> 30",
                "--current", "run", "--params", "p.yaml"]) == 0
    out = capsys.readouterr().out
    assert "git add ci/baseline && git commit -m 'ci baseline: new U-Net default; FD drops 50 -> 30'" in out
    assert "improved" in out  # the table of old -> new baseline
    base = repo / "ci" / "baseline"
    assert sorted(p.name for p in base.iterdir()) == ["BASELINE.json", "BASELINE.md", "gan.json", "ldm.json"]
    note = json.loads((base / "BASELINE.json").read_text())
    assert note["reason"].startswith("new U-Net") and note["commit"] == git(repo, "rev-parse", "HEAD")
    assert note["families"] == ["gan", "ldm"] and note["n_generated"] == [64]
    # the baseline folder now gates: the copy equals the run
    assert cli(["gate", "--baseline", "ci/baseline", "--current", "run", "--params", "p.yaml"]) == 0
    capsys.readouterr()

    # a second update: history newest first, a family dropped from the run is removed from the baseline
    write(repo / "run2", family(fd=(29.0, "lower", (28.0, 30.0))))
    assert cli(["baseline", "update", "--reason", "drop the GAN family from ci", "--current", "run2",
                "--params", "p.yaml"]) == 0
    assert not (base / "gan.json").exists()
    history = (base / "BASELINE.md").read_text()
    assert history.startswith("# ci baseline history")
    assert history.index("drop the GAN") < history.index("new U-Net") and "removed: gan.json" in history


def test_baseline_update_refuses_metrics_without_gated_metric(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "run", family(fd=(30.0, "lower")))
    assert cli(["baseline", "update", "--reason", "a first baseline for ci", "--current", "run"]) == 2
    assert "gated metric(s) missing" in capsys.readouterr().err
    assert not (tmp_path / "ci" / "baseline").exists()
