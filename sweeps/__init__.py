"""Optuna sweeps over learning-rate balances, KL weights and stage schedules (docs/sweeps.md).

    spritegen sweep run kl_weight --study cvae [--trials N] [--storage URL] [--workers K]
    spritegen sweep best | plots | apply [TRIAL]  kl_weight --study cvae

* ``definition.py``: the YAML definitions in this folder (``lr_balance``, ``kl_weight``,
  ``stage_schedule``) as typed dataclasses, checked against the params and the evaluation before any trial;
* ``trial.py``: one trial, the family's own training entry point (``train_cvae``/``train_gan``, what
  ``dvc repro`` runs) with the trial's overrides, scored per epoch by the evaluation module;
* ``study.py``: storage (a journal file, or a database URL), the worker loop, resuming, workers, best,
  apply, plots.
"""
