"""How much a pruner saves, and what it costs, on a study that was run without one.

    spritegen sweep run kl_weight --study cvae --trials 12 ...   # with `pruner: {type: none}` in a copy
    python benchmarks/replay_pruners.py sweeps_out/kl_nopruner-cvae/journal.log kl_nopruner-cvae --as kl_weight-cvae --names 200

Each complete trial's per-epoch objective values are fed, in trial order, through each pruner
configuration. It prints the epochs each configuration would have trained and whether it keeps the
study's best trial. The trials' params are held fixed: a real pruned study's sampler could then propose
other points, so read the figures as an estimate. Minimisation only, like the shipped studies.

Hyperband deals each trial to a bracket by hashing the study's name with the trial's number, so its
saving depends on the name. ``--as NAME`` replays under the name a real run would have (``<file>-<study>``,
exact for that run); ``--names N`` also replays under N other names and prints the mean and worst
saving and how often the best trial survives: the pruner's expected behaviour, not one name's luck.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import optuna


def configurations(epochs: int) -> dict[str, partial]:
    """label -> a factory of the pruner (a fresh one per replayed study)."""
    median, hyperband = optuna.pruners.MedianPruner, optuna.pruners.HyperbandPruner
    return {
        "median, startup 5, warm-up 4": partial(median, n_startup_trials=5, n_warmup_steps=4),
        "median, startup 5, warm-up 2": partial(median, n_startup_trials=5, n_warmup_steps=2),
        "median, startup 3, warm-up 4": partial(median, n_startup_trials=3, n_warmup_steps=4),
        "33rd percentile, startup 5, warm-up 4": partial(optuna.pruners.PercentilePruner, 33.0, n_startup_trials=5,
                                                         n_warmup_steps=4),
        **{f"hyperband, min {m}, factor {f}": partial(hyperband, min_resource=m, max_resource=epochs, reduction_factor=f)
           for m in (1, 2) for f in (2, 3, 4)},
    }


def replay(trials: list[optuna.trial.FrozenTrial], pruner: optuna.pruners.BasePruner, name: str) -> tuple[int, list]:
    """(epochs trained, trials that ran to the end) had ``pruner`` watched these trials in a study ``name``."""
    study = optuna.create_study(study_name=name, direction="minimize", pruner=pruner)
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
    ap.add_argument("storage", help="the study's storage, as `spritegen sweep run --storage` takes it: a journal file or a database URL")
    ap.add_argument("study", help="the study's name in the journal (<file>-<study>, as sweep run prints it)")
    ap.add_argument("--as", dest="as_name", help="replay under this study name (the name a real pruned run would have)")
    ap.add_argument("--names", type=int, default=0, help="also replay under this many other names (hyperband's brackets)")
    args = ap.parse_args()
    from spritegen.sweeps.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if "://" not in args.storage and not Path(args.storage).is_file():
        raise SystemExit(f"{args.storage}: no such journal file")
    storage = open_storage(args.storage, Path("."))
    if args.study not in optuna.get_all_study_names(storage):
        raise SystemExit(f"{args.study}: no such study in {args.storage} (it holds {optuna.get_all_study_names(storage)})")
    source = optuna.load_study(study_name=args.study, storage=storage)
    trials = [t for t in source.get_trials() if t.state.name == "COMPLETE" and t.intermediate_values]
    if not trials:
        raise SystemExit(f"{args.study}: no complete trial with per-epoch values to replay")
    full = sum(max(t.intermediate_values) for t in trials)
    epochs = max(max(t.intermediate_values) for t in trials)
    best = min(trials, key=lambda t: t.value)
    name = args.as_name or args.study
    print(f"{args.study}: {len(trials)} complete trials, {full} epochs without pruning, best #{best.number} = {best.value:.4f}")
    print(f"replayed as study {name!r}" + (f"; then under {args.names} other names" if args.names else ""))
    for label, make in configurations(epochs).items():
        spent, kept = replay(trials, make(), name)
        top = min(kept, key=lambda t: t.value)
        verdict = "keeps the best" if top.number == best.number else f"prunes the best (keeps #{top.number} = {top.value:.4f})"
        line = f"  {label:40s} {spent:4d} epochs ({1 - spent / full:5.1%} fewer), {verdict}"
        if args.names and label.startswith("hyperband"):
            savings, gaps = [], []
            for i in range(args.names):
                spent, kept = replay(trials, make(), f"{name}-{i}")
                savings.append(1 - spent / full)
                gaps.append(min(t.value for t in kept) - best.value)
            line += (f"; over {args.names} names: {statistics.mean(savings):.1%} fewer (worst {min(savings):.1%}), "
                     f"best kept {sum(g == 0 for g in gaps) / len(gaps):.0%}, worst best {best.value + max(gaps):.4f}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
