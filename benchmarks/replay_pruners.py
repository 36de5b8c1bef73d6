"""How much a pruner saves, and what it costs, on a study that was run without one.

    spritegen sweep run kl_weight --study cvae --trials 12 ...   # with `pruner: {type: none}` in a copy
    python benchmarks/replay_pruners.py sweeps_out/kl_weight-cvae/journal.log kl_weight-cvae

Each complete trial's per-epoch objective values are fed, in trial order, through each pruner
configuration. It prints the epochs each configuration would have trained and whether it keeps the
study's best trial. The trials' params are held fixed: a real pruned study's sampler would then propose
other points, so read the figures as an estimate. Minimisation only, like the shipped studies.
"""

from __future__ import annotations

import argparse

import optuna


def configurations() -> dict[str, optuna.pruners.BasePruner]:
    median, percentile = optuna.pruners.MedianPruner, optuna.pruners.PercentilePruner
    return {
        "median, startup 5, warm-up 4 (shipped)": median(n_startup_trials=5, n_warmup_steps=4),
        "median, startup 5, warm-up 2": median(n_startup_trials=5, n_warmup_steps=2),
        "median, startup 3, warm-up 4": median(n_startup_trials=3, n_warmup_steps=4),
        "33rd percentile, startup 5, warm-up 4": percentile(33.0, n_startup_trials=5, n_warmup_steps=4),
        "25th percentile, startup 3, warm-up 2": percentile(25.0, n_startup_trials=3, n_warmup_steps=2),
    }


def replay(trials: list[optuna.trial.FrozenTrial], pruner: optuna.pruners.BasePruner) -> tuple[int, list]:
    """(epochs trained, trials that ran to the end) had ``pruner`` watched these trials."""
    study = optuna.create_study(direction="minimize", pruner=pruner)
    epochs, kept = 0, []
    for t in trials:
        live = study.ask()
        for step in sorted(t.intermediate_values):
            live.report(t.intermediate_values[step], step)
            if live.should_prune():
                epochs += step
                study.tell(live, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            epochs += max(t.intermediate_values)
            kept.append(t)
            study.tell(live, t.value)
    return epochs, kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("journal", help="the study's journal.log (spritegen sweep run's storage)")
    ap.add_argument("study", help="the study's name (<file>-<study>, as sweep run prints it)")
    args = ap.parse_args()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    source = optuna.load_study(study_name=args.study, storage=JournalStorage(JournalFileBackend(args.journal)))
    trials = [t for t in source.get_trials() if t.state.name == "COMPLETE" and t.intermediate_values]
    if not trials:
        raise SystemExit(f"{args.study}: no complete trial with per-epoch values to replay")
    full = sum(max(t.intermediate_values) for t in trials)
    best = min(trials, key=lambda t: t.value)
    print(f"{args.study}: {len(trials)} complete trials, {full} epochs without pruning, best #{best.number} = {best.value:.4f}")
    for label, pruner in configurations().items():
        epochs, kept = replay(trials, pruner)
        top = min(kept, key=lambda t: t.value)
        verdict = "keeps the best" if top.number == best.number else f"prunes the best (keeps #{top.number} = {top.value:.4f})"
        print(f"  {label:40s} {epochs:4d} epochs ({1 - epochs / full:5.1%} fewer), {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
