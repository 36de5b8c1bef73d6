"""Optuna sweeps (spritegen/sweeps): definitions refused with the key named before any trial, a tiny
study end to end with a pruned trial, failures recorded while the study goes on, the same study twice
gives the same trials, kill -9 then resume with two workers on one journal (no trial lost or doubled),
and ``sweep apply`` writing params that validate."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spritegen.cli import main as cli
from spritegen.config import ConfigError
from spritegen.params import validate_sections
from spritegen.sweeps.definition import SWEEP_DIR, check_study, from_dict, load_and_check, read_sweep, StudySpec

TINY_STUDY = {
    "family": "cvae",
    # lr 1e-7 leaves the model as it was initialised: worse than the others after one epoch, so pruned
    "params": {"cvae.lr": {"choices": [3.0e-3, 1.0e-7]}, "cvae.kl_weight": {"low": 1.0, "high": 64.0, "log": True}},
    "objectives": {"fd": "minimize"},
    "budget": {"trials": 3, "epochs": 2},
    "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "sampler": {"type": "tpe", "seed": 0},
    "preset": "tiny",
}


def write_def(folder: Path, study: dict, name: str = "tiny", study_name: str = "cvae") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"description": "a test sweep", "studies": {study_name: study}}))
    return path


def _preset_only(preset):
    """The preset's overrides alone (the checks run on them, not on the repository's params.yaml)."""
    from spritegen.presets import preset_overrides

    return preset_overrides(preset) if preset else {}


# --- definitions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SWEEP_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_definition_checks(path):
    for name in read_sweep(path).studies:
        load_and_check(path, name, _preset_only)


def test_the_shipped_sweeps_are_the_issues_three():
    assert {p.stem for p in SWEEP_DIR.glob("*.yaml")} >= {"lr_balance", "kl_weight", "stage_schedule"}


@pytest.mark.parametrize("change,message", [
    ({"params": {"cvae.kl_wieght": {"low": 1.0, "high": 2.0}}}, "cvae.kl_wieght: no such param"),
    ({"params": {"gan.lr_g": {"low": 1e-4, "high": 1e-3}}}, "gan.lr_g: the cvae family does not read it"),
    ({"params": {"cvae.kl_weight": {"low": 8.0, "high": 2.0}}}, "cvae.kl_weight: low 8.0 must be below high 2.0"),
    ({"params": {"cvae.kl_weight": {"low": 0.0, "high": 2.0, "log": True}}}, "cvae.kl_weight: a log range needs low > 0"),
    ({"params": {"cvae.kl_weight": {"low": -1.0, "high": 2.0}}}, "cvae.kl_weight: -1.0 is not a valid value"),
    ({"params": {"cvae.batch_size": {"low": 1.5, "high": 8}}}, "cvae.batch_size: an integer field needs integer low/high"),
    ({"params": {"cvae.kl_schedule": {"choices": ["cyclical", "linear"]}}}, "cvae.kl_schedule: 'linear' is not a valid value"),
    ({"params": {"cvae.kl_weight": {"choices": [1.0, "high"]}}}, "cvae.kl_weight: 'high' is not a valid value"),
    ({"params": {"cvae.channels": {"choices": [[8, 16]]}}}, "cvae.channels: choice [8, 16] is not a scalar"),
    ({"params": {"cvae.kl_schedule": {"low": 1, "high": 2}}}, "cvae.kl_schedule: a range needs a number field"),
    ({"params": {"cvae.epochs": {"low": 1, "high": 4}}}, "cvae.epochs: budget.epochs sets it"),
    ({"objectives": {"fid": "minimize"}}, "objectives.fid: the evaluation does not produce it"),
    ({"objectives": {"fd": "maximize"}}, "objectives.fd: maximize is against the metric"),
    ({"objectives": {"fd": "minimize", "r_precision": "maximize"}}, "pruner: 'median' on a study with 2 objectives"),
    ({"fixed": {"cvae.dropout": 2.0}}, "fixed"),
])
def test_a_bad_definition_is_an_error_naming_it(change, message):
    study = {**TINY_STUDY, **change}
    with pytest.raises(ConfigError) as e:
        spec = from_dict(StudySpec, study, "tiny.studies.cvae")
        check_study(spec, _preset_only("tiny"), "tiny.studies.cvae")
    assert message in str(e.value)


def test_an_unknown_key_and_an_unknown_study_are_named(tmp_path):
    path = write_def(tmp_path, {**TINY_STUDY, "budgte": {}})
    with pytest.raises(ConfigError, match="unknown key.*budgte"):
        read_sweep(path)
    path = write_def(tmp_path, TINY_STUDY)
    with pytest.raises(ConfigError, match="no study 'gan'"):
        load_and_check(path, "gan", _preset_only)


# strategy custom, two phases per stage at the tiny preset's scale: per-phase keys name them
TINY_PHASES = [
    {"name": "vae", "stage": "vae", "epochs": [0, 1], "train": ["vae"]},
    {"name": "unet", "stage": "unet", "epochs": [0, 1], "train": ["unet"]},
    {"name": "unet+text", "stage": "unet", "epochs": [1, 2], "train": ["unet", "text", "align"], "warm_restart": True},
    {"name": "finetune", "stage": "finetune", "epochs": [0, 1], "train": ["text", "align"]},
]
LDM_STUDY = {
    "family": "ldm",
    "fixed": {"ldm.strategy": "custom", "ldm.phases": TINY_PHASES},
    "params": {"ldm.phases.unet+text.lr.unet": {"low": 1.0e-4, "high": 3.0e-3, "log": True}, "unet.lr": {"choices": [1.0e-3, 2.0e-3]}},
    "objectives": {"fd": "minimize"},
    "budget": {"trials": 2, "report_every": 1},
    "pruner": {"type": "none"},
    "sampler": {"type": "random", "seed": 0},
    "preset": "tiny",
}


@pytest.mark.parametrize("change,message", [
    ({"params": {"ldm.phases.nope.lr.unet": {"low": 1e-4, "high": 1e-3}}}, "ldm.phases.nope.lr.unet: no phase named 'nope'"),
    ({"params": {"ldm.phases.unet.lr.unett": {"low": 1e-4, "high": 1e-3}}}, "unknown component 'unett'"),
    ({"params": {"ldm.phases.unet.lr.unet": {"low": -1.0, "high": 1e-3}}}, "ldm.phases.unet.lr.unet: -1.0 is not a valid value"),
    ({"params": {"ldm.phases.unet.epochs": {"low": 1, "high": 2}}}, "a range needs a number field"),
    ({"params": {"text.hidden_size": {"low": 16, "high": 32}}}, "text.hidden_size: no stage up to until: finetune reads it"),
    ({"until": "vae"}, "ldm.phases.unet+text.lr.unet: no stage up to until: vae reads it"),
    ({"budget": {"epochs": 3}}, "budget.epochs: the ldm family has no single epoch count"),
    ({"family": "cvae", "until": "vae"}, "until: only the ldm family has stages"),
])
def test_a_bad_ldm_definition_is_an_error_naming_it(change, message):
    with pytest.raises(ConfigError) as e:
        spec = from_dict(StudySpec, {**LDM_STUDY, **change}, "tiny.studies.ldm")
        check_study(spec, _preset_only("tiny"), "tiny.studies.ldm")
    assert message in str(e.value)


def test_a_phase_key_sets_that_phase_only():
    from spritegen.sweeps.definition import with_overrides

    raw = with_overrides({}, {**LDM_STUDY["fixed"], "ldm.phases.unet+text.lr.unet": 5e-4})
    cfgs = validate_sections(raw, ["ldm"])
    assert [p.lr for p in cfgs["ldm"].phases] == [{}, {}, {"unet": 5e-4}, {}]


# --- studies on the tiny pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared synthetic sprites, the tiny text encoder and evaluator: what every trial reads."""
    from spritegen.data.synthetic import write_prepared

    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_prepared(root / "data/prepared", n_per_split=(24, 8, 8), resolution=16, seed=0)
    assert cli(["train", "text", "--preset", "tiny"]) == 0
    assert cli(["evaluator", "--preset", "tiny"]) == 0
    yield root
    mp.undo()


def _load(out: Path, name: str):
    import optuna

    from spritegen.sweeps.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(None, out))


@pytest.fixture(scope="module")
def tiny_study(workspace):
    path = write_def(workspace, TINY_STUDY)
    assert cli(["sweep", "run", str(path), "--out", "a"]) == 0
    return path, _load(workspace / "a", "tiny-cvae")


@pytest.mark.slow
def test_a_tiny_study_end_to_end_with_one_pruned(workspace, tiny_study):
    from optuna.trial import TrialState

    _, study = tiny_study
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 3 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in trials:
        folder = workspace / f"a/trials/{t.number:04d}"
        row = json.loads((folder / "trial.json").read_text())
        assert row["state"] == t.state.name.lower() and row["params"] == t.params
        assert t.intermediate_values, "every trial reports its scored epochs"
        if t.state == TrialState.COMPLETE:  # the same bundle `spritegen train cvae` publishes
            assert (folder / "model/model.safetensors").exists() and sorted(t.intermediate_values) == [1, 2]
            assert t.value == t.intermediate_values[2]
        else:
            assert t.user_attrs["reason"].startswith("pruned at epoch 1") and 2 not in t.intermediate_values
    for plot in ("optimization_history", "intermediate_values", "param_importances"):
        assert (workspace / f"a/plots/{plot}.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_hyperband_study_prunes_at_its_rungs(workspace):
    """The shipped kl_weight/cvae pruner: hyperband with epochs as the resource. A trial worse than the
    others of its bracket at a rung stops there. Hyperband deals trials to brackets by a hash of the
    study's name and the trial's number; under the name "hb-cvae" the first untrained trial (lr 1e-7)
    shares the first-rung bracket with trial 0 and stops at epoch 1."""
    from optuna.trial import TrialState

    from spritegen.sweeps.study import summary

    # five trials: a median pruner with 5 start-up trials would prune none, so a pruned one is hyperband's
    study = {**TINY_STUDY, "pruner": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
             "budget": {"trials": 5, "epochs": 3}}
    assert cli(["sweep", "run", str(write_def(workspace, study, name="hb")), "--out", "hb", "--no-plots"]) == 0
    loaded = _load(workspace / "hb", "hb-cvae")
    trials = loaded.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 5 and pruned and any(t.state == TrialState.COMPLETE for t in trials)
    for t in pruned:  # stopped at its last report: that epoch is in the reason and in the compute spent
        assert t.user_attrs["reason"].startswith(f"pruned at epoch {max(t.intermediate_values)}:")
        assert t.user_attrs["epochs_trained"] == max(t.intermediate_values)
    assert any(max(t.intermediate_values) == 1 and t.params["cvae.lr"] == 1e-7 for t in pruned)
    assert summary(loaded)["epochs_trained"] == sum(max(t.intermediate_values) for t in trials) < 3 * len(trials)


@pytest.mark.slow
def test_the_same_study_run_again_gives_the_same_trials(workspace, tiny_study):
    path, first = tiny_study
    assert cli(["sweep", "run", str(path), "--out", "b", "--trials", "2", "--no-plots"]) == 0
    again = _load(workspace / "b", "tiny-cvae").get_trials()
    assert [(t.params, t.state, t.values) for t in again] == [(t.params, t.state, t.values) for t in first.get_trials()[:2]]


@pytest.mark.slow
def test_best_and_apply_write_params_that_validate(workspace, tiny_study, capsys):
    path, study = tiny_study
    assert cli(["sweep", "best", str(path), "--out", "a"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"][0]["number"] == study.best_trial.number and shown["counts"]["pruned"] >= 1
    params = workspace / "p.yaml"
    params.write_text(yaml.safe_dump({"cvae": {"epochs": 7}}))
    assert cli(["sweep", "apply", str(path), "--out", "a", "--params", str(params)]) == 0
    written = yaml.safe_load(params.read_text())
    cfgs = validate_sections(written, ["cvae"])
    assert cfgs["cvae"].kl_weight == study.best_trial.params["cvae.kl_weight"]
    assert cfgs["cvae"].epochs == 7, "the budget (epochs) is the study's, not applied"
    pruned = next(t.number for t in study.get_trials() if t.state.name == "PRUNED")
    assert cli(["sweep", "apply", str(path), str(pruned), "--out", "a", "--params", str(params)]) == 2
    assert "not complete" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trial_that_raises_and_one_that_returns_nan_are_recorded_and_the_study_goes_on(workspace, monkeypatch):
    import spritegen.sweeps.trial as T

    real_trainer, real_score = T.trainer, T.Scoring.score
    calls = {"train": 0}

    def trainer(family):
        calls["train"] += 1
        if calls["train"] == 1:
            def boom(*a, **k):
                raise RuntimeError("out of memory (simulated)")
            return boom
        return real_trainer(family)

    def score(self, generate, family):
        values = real_score(self, generate, family)
        return {**values, "fd": float("nan")} if calls["train"] == 2 else values

    monkeypatch.setattr(T, "trainer", trainer)
    monkeypatch.setattr(T.Scoring, "score", score)
    path = write_def(workspace, {**TINY_STUDY, "budget": {"trials": 3, "epochs": 1}, "pruner": {"type": "none"}}, "fails")
    assert cli(["sweep", "run", str(path), "--out", "c", "--no-plots"]) == 0
    t = _load(workspace / "c", "fails-cvae").get_trials()
    assert [x.state.name for x in t] == ["FAIL", "FAIL", "COMPLETE"]
    assert t[0].user_attrs["reason"] == "RuntimeError: out of memory (simulated)"
    assert t[1].user_attrs["reason"] == "diverged: objective fd is nan at epoch 1"


@pytest.mark.slow
def test_kill_9_then_resume_with_two_workers_loses_no_trial(workspace):
    from optuna.trial import TrialState

    path = write_def(workspace, {**TINY_STUDY, "budget": {"trials": 4, "epochs": 1}, "pruner": {"type": "none"}}, "resume")
    cmd = [sys.executable, "-m", "spritegen", "sweep", "run", str(path), "--out", "d", "--no-plots"]
    proc = subprocess.Popen(cmd, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it in the middle of its second trial
        time.sleep(0.5)
        if (workspace / "d/journal.log").exists():
            t = _load(workspace / "d", "resume-cvae").get_trials()
            if any(x.state == TrialState.COMPLETE for x in t) and any(x.state == TrialState.RUNNING for x in t):
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {x.number: x for x in _load(workspace / "d", "resume-cvae").get_trials()}
    killed = [n for n, x in before.items() if x.state == TrialState.RUNNING]
    assert killed, "the kill landed inside a trial"

    done = subprocess.run([*cmd, "--workers", "2"], cwd=workspace, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _load(workspace / "d", "resume-cvae").get_trials()
    counted = [x for x in after if x.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or x.state == TrialState.FAIL and not x.user_attrs.get("requeued")]
    assert len(counted) == 4, "exactly --trials finished trials: none lost, none doubled"
    assert not [x for x in after if x.state in (TrialState.RUNNING, TrialState.WAITING)]
    for n, x in before.items():  # finished trials are kept as they were
        if x.state == TrialState.COMPLETE:
            assert after[n].state == TrialState.COMPLETE and after[n].values == x.values
    k = after[killed[0]]
    assert k.state == TrialState.FAIL and k.user_attrs["reason"].startswith("interrupted: worker pid")
    retry = [x for x in after if x.user_attrs.get("retry_of") == k.number]
    assert len(retry) == 1 and retry[0].params == k.params and retry[0].state == TrialState.COMPLETE
    pids = {x.user_attrs["worker"]["pid"] for x in after if x.number > max(before)} | {retry[0].user_attrs["worker"]["pid"]}
    assert len(pids) == 2, "both workers ran trials"


# --- PostgreSQL: a real server, started and stopped here ---------------------------------------------------------


def _postgres_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free port (Debian's postgresql package; .ci/run installs it)."""
    import getpass
    import shutil
    import socket

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (/usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary (the test extras) is not installed")
    # initdb refuses to run as root: run the server as the postgres user then
    prefix = []
    if os.geteuid() == 0:
        # runuser lives in sbin, which a plain user's PATH (and `env -i` CI) may not hold
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        prefix = [runuser, "-u", "postgres", "--"]
    import tempfile

    # outside pytest's tmp_path, whose parents only root may enter; removed at the end
    top = Path(tempfile.mkdtemp(prefix="spritegen-pg-"))
    os.chmod(top, 0o755)
    data = top / "pg"
    data.mkdir()
    if prefix:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = "postgres" if prefix else getpass.getuser()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "sweeps"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/sweeps"  # SQLAlchemy 2.1 would pick psycopg 3
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_a_study_round_trips_through_a_real_postgresql_server(workspace, postgres, capsys):
    import optuna

    path = write_def(workspace, {**TINY_STUDY, "budget": {"trials": 2, "epochs": 1}, "pruner": {"type": "none"}}, "pg")
    assert cli(["sweep", "run", str(path), "--storage", postgres, "--out", "pg", "--no-plots"]) == 0
    study = optuna.load_study(study_name="pg-cvae", storage=postgres)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    capsys.readouterr()
    assert cli(["sweep", "best", str(path), "--storage", postgres, "--out", "pg"]) == 0
    assert json.loads(capsys.readouterr().out)["best"][0]["number"] == study.best_trial.number
    assert not (workspace / "pg/journal.log").exists(), "the database holds the study, not a journal"


# --- the ldm and gan families ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ldm_study(workspace):
    path = write_def(workspace, {**LDM_STUDY, "budget": {"trials": 1, "report_every": 1}}, "ldmtiny", "ldm")
    assert cli(["sweep", "run", str(path), "--out", "l", "--no-plots"]) == 0
    return _load(workspace / "l", "ldmtiny-ldm")


@pytest.mark.slow
def test_an_ldm_study_chains_vae_unet_finetune_and_scores_samples(workspace, ldm_study):
    from spritegen.ldm.models import load_bundle

    (t,) = ldm_study.get_trials()
    assert t.state.name == "COMPLETE", t.user_attrs.get("reason")
    # steps count every stage's epochs: vae 1 (not scored: no U-Net yet), unet 2, finetune 1
    assert sorted(t.intermediate_values) == [2, 3, 4] and t.value == t.intermediate_values[4]
    model = workspace / "l/trials/0000/model"
    assert all((model / stage / "model.safetensors").exists() for stage in ("vae", "unet", "finetune"))
    phases = yaml.safe_load((model / "unet/config.yaml").read_text())["params"]["ldm"]["phases"]
    assert phases[2]["lr"] == {"unet": t.params["ldm.phases.unet+text.lr.unet"]}, "the per-phase rate reached the stage"
    recorded = yaml.safe_load((workspace / "l/trials/0000/params.yaml").read_text())
    assert recorded["ldm"]["phases"][2]["lr"] == phases[2]["lr"] and recorded["unet"]["lr"] == t.params["unet.lr"]
    assert load_bundle(model / "finetune").unet is not None


@pytest.mark.slow
def test_the_ldm_reader_leaves_training_bit_identical(workspace, ldm_study, tmp_path):
    """The trial's unet stage ran with the sweep's reader (sampling the model after every epoch); the
    same stage from the same vae output without a reader publishes the same weights, byte for byte."""
    import shutil

    from spritegen.ldm.train import train_stage
    from spritegen.sweeps.trial import FAMILY_SECTIONS

    from spritegen.config import deep_merge

    trial = workspace / "l/trials/0000"
    raw = deep_merge(_preset_only("tiny"), yaml.safe_load((trial / "params.yaml").read_text()))
    cfgs = validate_sections(raw, FAMILY_SECTIONS["ldm"])
    shutil.copytree(trial / "model/vae", tmp_path / "vae")
    train_stage("unet", cfgs, workspace / "data/prepared", tmp_path, workspace / "models/text", live_dir=None, progress=False)
    for name in ("model.safetensors", "metrics.json"):
        assert (trial / "model/unet" / name).read_bytes() == (tmp_path / "unet" / name).read_bytes(), name


@pytest.mark.slow
def test_an_ldm_vae_study_scores_the_vae_reconstructions(workspace):
    study = {**LDM_STUDY, "until": "vae", "fixed": {}, "params": {"vae.kl_max_weight": {"low": 1e-6, "high": 1e-2, "log": True}},
             "budget": {"trials": 1, "report_every": 1}}
    path = write_def(workspace, study, "ldmvae", "vae")
    assert cli(["sweep", "run", str(path), "--out", "v", "--no-plots"]) == 0
    (t,) = _load(workspace / "v", "ldmvae-vae").get_trials()
    assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [1]
    model = workspace / "v/trials/0000/model"
    assert (model / "vae/model.safetensors").exists() and not (model / "unet").exists()


@pytest.mark.slow
def test_a_tiny_gan_study_runs(workspace):
    study = {"family": "gan", "params": {"gan.lr_g": {"low": 1e-4, "high": 1e-3, "log": True}},
             "objectives": {"fd": "minimize"}, "budget": {"trials": 2, "epochs": 2}, "pruner": {"type": "none"},
             "sampler": {"type": "random", "seed": 0}, "preset": "tiny"}
    path = write_def(workspace, study, "gantiny", "gan")
    assert cli(["sweep", "run", str(path), "--out", "g", "--no-plots"]) == 0
    trials = _load(workspace / "g", "gantiny-gan").get_trials()
    assert len(trials) == 2
    for t in trials:  # complete, or pruned on persistent collapse with its reason; never failed
        assert t.state.name in ("COMPLETE", "PRUNED"), t.user_attrs.get("reason")
        assert t.intermediate_values
    assert any(t.state.name == "COMPLETE" for t in trials)


# --- DVC experiments ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_each_completed_trial_is_a_dvc_experiment(workspace, monkeypatch):
    """In a git + DVC repository every completed trial is saved as an experiment: ``dvc exp show``
    lists it with its params and metrics; the project's own stages (dvc.lock) are not committed."""
    repo = workspace / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    Path("dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi > o.txt\n    outs: [o.txt]\n")
    Path(".gitignore").write_text("sweeps_out/\n")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    path = write_def(repo, {**TINY_STUDY, "budget": {"trials": 2, "epochs": 1}, "pruner": {"type": "none"}}, "exp")
    inputs = ["--data", str(workspace / "data/prepared"), "--text", str(workspace / "models/text"),
              "--evaluator", str(workspace / "models/evaluator"), "--ref-cache", str(workspace / "reference")]
    assert cli(["sweep", "run", str(path), *inputs]) == 0
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    exps = {r["name"]: r["data"] for row in shown for e in (row.get("experiments") or []) for r in e["revs"]}
    study = _load(repo / "sweeps_out/exp-cvae", "exp-cvae")
    assert sorted(exps) == ["exp-cvae-t0000", "exp-cvae-t0001"]
    for t in study.get_trials():
        row = json.loads((repo / f"sweeps_out/exp-cvae/trials/{t.number:04d}/trial.json").read_text())
        data = exps[row["dvc_exp"]]
        params = data["params"]["sweeps_exp/exp-cvae/params.yaml"]["data"]
        metrics = data["metrics"]["sweeps_exp/exp-cvae/metrics.json"]["data"]
        assert params["cvae"]["kl_weight"] == t.params["cvae.kl_weight"] and params["cvae"]["epochs"] == 1
        assert metrics["trial"] == t.number and metrics["fd"] == t.value
    assert (repo / "sweeps_exp/exp-cvae/plots/optimization_history.png").exists()
    assert not (repo / "dvc.lock").exists(), "the project's stages were not committed"
