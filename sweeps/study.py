"""Running a study, and reading one back: ``spritegen sweep run | best | apply | plots``.

    spritegen sweep run sweeps/kl_weight.yaml --study cvae [--trials N] [--storage URL] [--workers K]
    spritegen sweep best sweeps/kl_weight.yaml --study cvae        # best trial, or the Pareto front
    spritegen sweep apply sweeps/kl_weight.yaml --study cvae [TRIAL]   # its params into params.yaml

A study lives in ``--out`` (default ``sweeps_out/<file>-<study>/``): ``journal.log`` (Optuna's journal
storage, unless ``--storage`` names a database), ``trials/NNNN/`` (each trial's params.yaml, trial.json
and trained model) and ``plots/*.png``. Its Optuna name is ``<file>-<study>``.

Workers and interruptions. ``--trials N`` is the number of finished trials the study runs to, so the same
command run again continues an interrupted study, and several workers (``--workers K`` processes here,
or the same command on other machines with one ``--storage``) share one count. On a journal file the
count and the next trial's creation happen under one file lock, so K workers make exactly N trials; on a
database workers on several machines can overshoot by at most one trial each. A trial interrupted by
Ctrl-C is failed with reason "interrupted" and queued again with its params; one whose worker was killed
(kill -9) is found by the next worker on the same machine (its pid is gone) and handled the same way;
on a database, Optuna's heartbeat finds it from any machine. Finished trials are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from spritegen.config import ConfigError, deep_merge
from spritegen.errors import UserError
from spritegen.sweeps.definition import FAMILY_SECTIONS, RUNNABLE, StudySpec, load_and_check, with_overrides
from spritegen.sweeps.trial import Inputs, Scoring, run_trial, total_epochs, trial_overrides

DEFAULT_OUT = Path("sweeps_out")
HEARTBEAT_S, GRACE_S = 10, 60  # database storage: a trial silent for a minute has lost its worker


def base_params(params: Path | None, preset: str | None) -> dict:
    from spritegen.params import raw_params

    return raw_params(params, preset)


def study_name(path: Path, study: str) -> str:
    return f"{path.stem}-{study}"


def open_storage(url: str | None, folder: Path):
    """A journal file (the default, ``folder/journal.log``, or a path) or a database URL (``postgresql://``,
    ``sqlite:///``)."""
    from optuna.storages import RDBStorage, RetryFailedTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url and "://" in url:
        # the heartbeat lets any worker fail (and requeue) a trial whose process died, on any machine
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          failed_trial_callback=RetryFailedTrialCallback(max_retry=2))
    path = Path(url) if url else folder / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(spec: StudySpec):
    import optuna

    s = spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True)


def make_pruner(spec: StudySpec, epochs: int):
    import optuna

    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=epochs,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, name: str, storage, epochs: int):
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=make_sampler(spec),
                                pruner=make_pruner(spec, epochs), directions=list(spec.objectives.values()))
    study.set_user_attr("objectives", list(spec.objectives))
    return study


# --- the count of finished trials, dead workers, the lock ----------------------------------------------------


def counted(trial) -> bool:
    """A trial that counts towards --trials: finished, and not failed by an interruption (those are requeued)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("requeued")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), so a reused pid is not taken for the worker."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or _process_start(pid) in (None, start)


def requeue(study, trial, reason: str) -> None:
    """Fail an interrupted trial with its reason and queue its params again (a finished trial is never touched)."""
    from optuna.trial import TrialState

    storage = study._storage  # the public Study API cannot end another process's trial
    storage.set_trial_user_attr(trial._trial_id, "reason", reason)
    storage.set_trial_user_attr(trial._trial_id, "requeued", True)
    if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def fail_dead_workers(study, say) -> None:
    """RUNNING trials of this machine whose worker process is gone (kill -9, a crash): failed and requeued."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w and w["host"] == host and not _alive(w["pid"], w.get("start")):
            say(f"trial {t.number}: its worker (pid {w['pid']}) is gone; failed and queued again")
            requeue(study, t, f"interrupted: worker pid {w['pid']} died")


@contextlib.contextmanager
def count_lock(folder: Path, journal: bool):
    """Workers on one journal count and create trials one at a time (no overshoot of --trials)."""
    if not journal:
        yield
        return
    with open(folder / "count.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the worker loop ---------------------------------------------------------------------------------------------


def run_worker(spec: StudySpec, name: str, base_raw: dict, inputs: Inputs, out: Path, storage_url: str | None,
               n_trials: int, say=print, dvc_repo: Path | None = None) -> int:
    """Run trials until the study holds ``n_trials`` counted ones; returns how many this worker ran.
    ``dvc_repo``: save each completed trial as a DVC experiment of that repository (sweeps/record.py)."""
    import optuna
    from optuna.trial import TrialState

    from spritegen.params import validate_sections

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = not (storage_url and "://" in storage_url)
    storage = open_storage(storage_url, out)
    cfgs0 = validate_sections(with_overrides(base_raw, trial_overrides(spec, {})), FAMILY_SECTIONS[spec.family])
    study = open_study(spec, name, storage, total_epochs(spec, cfgs0))
    cache: dict = {}

    def scoring(cfgs) -> Scoring:  # one per process: the evaluation params are the same in every trial
        if "s" not in cache:
            cache["s"] = Scoring(inputs, cfgs)
        return cache["s"]

    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}
    ran = 0
    while True:
        with count_lock(out, journal):
            fail_dead_workers(study, say)
            trials = study.get_trials(deepcopy=False)
            done = sum(counted(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done + running >= n_trials:
                break
            trial = study.ask()  # inside the lock: the next worker counts this one as running
            trial.set_user_attr("worker", me)
        ran += 1
        state, values = _run_one(study, trial, spec, base_raw, inputs, out, scoring, say)
        study.tell(trial, values, state=state)
        reason = trial.user_attrs.get("reason")
        say(f"trial {trial.number}: {state.name.lower()}" + (f" ({reason})" if reason else "") +
            (f" -> {values}" if values is not None else ""))
        if dvc_repo is not None and state == TrialState.COMPLETE:
            save_experiment(study, trial, spec, base_raw, out, dvc_repo, say)
    if running:
        say(f"{running} trial(s) still running in other workers")
    return ran


def save_experiment(study, trial, spec: StudySpec, base_raw: dict, out: Path, root: Path, say) -> None:
    """A completed (and told) trial as a DVC experiment, so the plots saved with it include it. The
    experiment's name, or why it could not be saved, goes into the trial's trial.json and, on failure,
    the study's ``dvc_exp_error_NNNN`` user attribute (a finished trial's own attributes are frozen); the
    trial stays complete: its model and values are in the study whatever DVC does."""
    from spritegen.sweeps.definition import as_params
    from spritegen.sweeps.record import record_trial

    path = out / "trials" / f"{trial.number:04d}" / "trial.json"
    row = json.loads(path.read_text())
    params = as_params(base_raw, trial_overrides(spec, trial.params))
    try:
        row["dvc_exp"] = record_trial(root, study.study_name, trial.number, params, row["metrics"] or {},
                                      plots=lambda folder: write_plots(study, folder))
        say(f"trial {trial.number}: saved as DVC experiment {row['dvc_exp']} (dvc exp show)")
    except Exception as e:  # noqa: BLE001 - DVC raises many kinds; the reason is kept
        row["dvc_exp_error"] = f"{type(e).__name__}: {e}"
        study.set_user_attr(f"dvc_exp_error_{trial.number:04d}", row["dvc_exp_error"])
        say(f"trial {trial.number}: NOT saved as a DVC experiment: {row['dvc_exp_error']}")
    path.write_text(json.dumps(row, indent=1, sort_keys=True, default=float))


def _run_one(study, trial, spec, base_raw, inputs, out, scoring, say):
    """(state, values) of one trial; Ctrl-C fails it as interrupted, queues it again and stops the worker."""
    import optuna
    from optuna.trial import TrialState

    try:
        return TrialState.COMPLETE, run_trial(trial, spec, base_raw, inputs, out, scoring, say)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except KeyboardInterrupt:
        requeue(study, trial, "interrupted: Ctrl-C")
        raise
    except Exception as e:  # a failed trial never stops the study: its reason is recorded
        if "reason" not in trial.user_attrs:
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        say(f"trial {trial.number} failed: {trial.user_attrs['reason']}")
        return TrialState.FAIL, None


# --- the commands ----------------------------------------------------------------------------------------------


def _resolve(args):
    preset_arg = args.preset

    def base_of(preset):
        return base_params(args.params, preset_arg or preset)

    path, sname, spec, base = load_and_check(args.sweep, args.study, base_of)
    out = Path(args.out) if getattr(args, "out", None) else DEFAULT_OUT / study_name(path, sname)
    return path, sname, spec, base, out


def run_main(args) -> int:
    path, sname, spec, base, out = _resolve(args)
    if spec.family not in RUNNABLE:
        raise UserError(f"{path.name} study {sname!r}: trials of the {spec.family} family are not supported yet "
                        f"(runnable: {list(RUNNABLE)}); the definition is checked and kept for when they are (docs/sweeps.md)")
    n_trials = args.trials or spec.budget.trials
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: at least 1")
    if args.workers > 1:
        # share the cores: every worker's torch threads (a param, so each trial records it)
        threads = max(1, (base.get("train", {}).get("threads") or 2) // args.workers)
        base = deep_merge(base, {"train": {"threads": threads}})
    inputs = Inputs(Path(args.data), Path(args.text), Path(args.evaluator), Path(args.ref_cache))
    for p in (inputs.data, inputs.text, inputs.evaluator):
        if not p.exists():
            raise UserError(f"{p} missing: the trials read the pipeline's outputs (dvc repro text evaluator reference)")
    out.mkdir(parents=True, exist_ok=True)
    name = study_name(path, sname)
    dvc_repo = dvc_workspace(args.dvc_exp)
    print(f"study {name}: {n_trials} trials of {spec.family}, objectives {spec.objectives}, storage "
          f"{args.storage or out / 'journal.log'}, {args.workers} worker(s), DVC experiments "
          f"{'in ' + str(dvc_repo) if dvc_repo else 'off'}", flush=True)
    children = []
    for _ in range(args.workers - 1):
        cmd = [sys.executable, "-m", "spritegen", "sweep", "run", str(path), "--study", sname, "--trials", str(n_trials),
               "--out", str(out), "--workers", "1", "--data", str(inputs.data), "--text", str(inputs.text),
               "--evaluator", str(inputs.evaluator), "--ref-cache", str(inputs.ref_cache), "--no-plots",
               "--threads", str(base["train"]["threads"])]
        cmd += ["--storage", args.storage] if args.storage else []
        cmd += ["--params", str(args.params)] if args.params else []
        cmd += ["--preset", args.preset] if args.preset else []
        cmd += ["--dvc-exp" if dvc_repo else "--no-dvc-exp"]
        children.append(subprocess.Popen(cmd))
    if args.threads:
        base = deep_merge(base, {"train": {"threads": args.threads}})
    try:
        ran = run_worker(spec, name, base, inputs, out, args.storage, n_trials, dvc_repo=dvc_repo)
    except KeyboardInterrupt:
        print(f"interrupted: the running trial is queued again; run the same command to continue {name}", file=sys.stderr)
        return 130
    finally:
        codes = [c.wait() for c in children]
    print(f"this worker ran {ran} trial(s); other workers exited with {codes}" if children else f"ran {ran} trial(s)")
    if not args.no_plots:
        write_plots(load_study(args.storage, out, name), out / "plots")
    print_best(load_study(args.storage, out, name))
    return 0 if all(c == 0 for c in codes) else 1


def dvc_workspace(asked: bool | None) -> Path | None:
    """The repository trials are saved into as DVC experiments: the working directory's git + DVC
    repository by default (none outside one); ``--dvc-exp`` insists, ``--no-dvc-exp`` turns it off."""
    from spritegen.sweeps.record import dvc_root

    if asked is False:
        return None
    root = dvc_root(Path.cwd())
    if asked and root is None:
        raise UserError(f"--dvc-exp: {Path.cwd()} is not inside a git + DVC repository (git init; dvc init)")
    return root


def load_study(storage_url: str | None, out: Path, name: str):
    import optuna

    path = Path(storage_url) if storage_url and "://" not in storage_url else out / "journal.log"
    if not (storage_url and "://" in storage_url) and not path.exists():
        raise UserError(f"{path}: no study there; run `spritegen sweep run` first (or give --storage/--out)")
    return optuna.load_study(study_name=name, storage=open_storage(storage_url, out))


def summary(study) -> dict:
    """The study's outcome as data: counts per state, and the best trial or the Pareto front."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # one objective: the best trial (the first of any tied); several: every trial of the Pareto front
    best = ([study.best_trial] if len(study.directions) == 1 else study.best_trials) if complete else []

    def row(t):
        return {"number": t.number, "values": t.values, "params": t.params, "epochs_trained": t.user_attrs.get("epochs_trained")}

    return {"study": study.study_name, "objectives": [d.name.lower() for d in study.directions], "counts": counts,
            "best" if len(study.directions) == 1 else "pareto_front": [row(t) for t in best],
            "failed_or_pruned": [{"number": t.number, "state": t.state.name.lower(), "reason": t.user_attrs.get("reason")}
                                 for t in trials if t.state in (TrialState.FAIL, TrialState.PRUNED)],
            "epochs_trained": sum(t.user_attrs.get("epochs_trained", 0) for t in trials)}


def print_best(study) -> None:
    s = summary(study)
    print(json.dumps(s, indent=1, default=float))


def best_main(args) -> int:
    path, sname, spec, base, out = _resolve(args)
    print_best(load_study(args.storage, out, study_name(path, sname)))
    return 0


def apply_main(args) -> int:
    """Write a trial's searched params into params.yaml, validated first; the file is untouched on error."""
    import yaml
    from optuna.trial import TrialState

    from spritegen.config import read_yaml
    from spritegen.params import DEFAULT_PARAMS, validate_sections

    path, sname, spec, base, out = _resolve(args)
    study = load_study(args.storage, out, study_name(path, sname))
    if args.trial is None:
        if len(study.directions) > 1:
            raise UserError("a multi-objective study has no single best trial: name one of its Pareto front "
                            f"(spritegen sweep best): {[t.number for t in study.best_trials]}")
        trial = study.best_trial
    else:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == args.trial]
        if not found:
            raise UserError(f"no trial {args.trial} in {study.study_name}")
        trial = found[0]
        if trial.state != TrialState.COMPLETE:
            raise UserError(f"trial {args.trial} is {trial.state.name.lower()}, not complete ({trial.user_attrs.get('reason')})")
    params_path = Path(args.params or DEFAULT_PARAMS)
    current = read_yaml(params_path) if params_path.exists() else {}
    # the searched params and the study's fixed ones; not the budget (epochs) nor the sweep profile
    changes = {**spec.fixed, **trial.params}
    updated = with_overrides(current, changes)
    try:
        validate_sections(updated, FAMILY_SECTIONS[spec.family])
    except ConfigError as e:
        raise ConfigError(f"trial {trial.number}'s params do not validate on {params_path}: {e}") from None
    for key, value in changes.items():
        old = current
        for part in key.split("."):
            old = old.get(part) if isinstance(old, dict) else None
        print(f"{key}: {old!r} -> {value!r}")
    params_path.write_text(yaml.safe_dump(updated, sort_keys=False))
    print(f"wrote trial {trial.number} of {study.study_name} into {params_path}")
    return 0


def plots_main(args) -> int:
    path, sname, spec, base, out = _resolve(args)
    write_plots(load_study(args.storage, out, study_name(path, sname)), out / "plots")
    return 0


def write_plots(study, folder: Path) -> list[Path]:
    """Optimisation history, param importance, intermediate values (single objective) or the Pareto front
    (several), as PNGs. A plot the study cannot make yet (too few complete trials) is skipped, saying why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    multi = len(study.directions) > 1
    names = [d for d in study.user_attrs.get("objectives", [])]
    plots = {"pareto_front": lambda: vis.plot_pareto_front(study, target_names=names or None)} if multi else {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study)}
    plots["param_importances"] = (lambda: vis.plot_param_importances(study, target=lambda t: t.values[0],
                                                                      target_name="objective 0")) if multi else \
        (lambda: vis.plot_param_importances(study))
    written = []
    for name, make in plots.items():
        try:
            ax = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"plot {name}: skipped ({e})")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(folder / f"{name}.png")
    print(f"plots: {[p.name for p in written]} in {folder}")
    return written
