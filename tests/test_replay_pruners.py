"""benchmarks/replay_pruners.py: a replay spends what a real pruned study would, hyperband's brackets included."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("replay_pruners", REPO / "benchmarks" / "replay_pruners.py")
replay_pruners = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay_pruners)

EPOCHS, REPORT_EVERY = 20, 2


def curve(i: int) -> dict[int, float]:
    """Trial i's objective every REPORT_EVERY epochs: falling towards a level that differs per trial."""
    level = 0.3 + 0.05 * ((i * 7) % 11)
    return {e: level + 1.0 / e for e in range(REPORT_EVERY, EPOCHS + 1, REPORT_EVERY)}


def unpruned_study(storage, name: str, n: int = 12) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", pruner=optuna.pruners.NopPruner())
    for i in range(n):
        t = study.ask()
        for e, v in curve(i).items():
            t.report(v, e)
        study.tell(t, curve(i)[EPOCHS])
    return study


def real_pruned_run(name: str, pruner, n: int = 12) -> tuple[int, list[int]]:
    """The same trials under a real study with ``pruner``: (epochs trained, numbers of the trials that finished)."""
    study = optuna.create_study(study_name=name, direction="minimize", pruner=pruner)
    spent, finished = 0, []
    for i in range(n):
        t = study.ask()
        for e, v in curve(i).items():
            t.report(v, e)
            if t.should_prune():
                spent += e
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            spent += EPOCHS
            finished.append(i)
            study.tell(t, curve(i)[EPOCHS])
    return spent, finished


@pytest.mark.parametrize("name", ["kl_weight-cvae", "lr_balance-gan"])
def test_a_replay_spends_what_the_real_pruned_study_spends(name):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = unpruned_study(None, "source").get_trials()
    for pruner in (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS, reduction_factor=3),
                   optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)):
        spent, kept = replay_pruners.replay(trials, pruner, name)
        assert (spent, [t.number for t in kept]) == real_pruned_run(name, pruner)
        assert spent < EPOCHS * len(trials)  # these curves get pruned: the comparison is not vacuous
    spent, kept = replay_pruners.replay(trials, optuna.pruners.NopPruner(), name)
    assert spent == EPOCHS * len(trials) and len(kept) == len(trials)


def test_the_replay_command_reports_savings_and_the_best(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "journal.log"
    unpruned_study(JournalStorage(JournalFileBackend(str(journal))), "toy-cvae")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "replay_pruners.py"), str(journal), "toy-cvae",
                          "--as", "kl_weight-cvae", "--names", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12 complete trials, 240 epochs without pruning, best #" in out.stdout
    hyperband = [line for line in out.stdout.splitlines() if "hyperband, min 1, factor 3" in line]
    assert len(hyperband) == 1 and "over 5 names" in hyperband[0] and "fewer" in hyperband[0]


def test_a_wrong_study_or_file_is_named(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "journal.log"
    unpruned_study(JournalStorage(JournalFileBackend(str(journal))), "toy-cvae", n=2)
    script = str(REPO / "benchmarks" / "replay_pruners.py")
    out = subprocess.run([sys.executable, script, str(journal), "kl_weight-cvae"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "kl_weight-cvae: no such study" in out.stderr and "toy-cvae" in out.stderr
    out = subprocess.run([sys.executable, script, str(tmp_path / "none.log"), "toy-cvae"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no such journal file" in out.stderr and not (tmp_path / "none.log").exists()
