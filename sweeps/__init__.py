"""Optuna sweeps over learning-rate balances, KL weights and stage schedules (docs/sweeps.md).

    spritegen sweep run kl_weight --study cvae [--trials N] [--storage URL] [--workers K]
    spritegen sweep best | plots | apply [TRIAL]  kl_weight --study cvae

* ``definition.py``: the YAML definitions in this folder (``lr_balance``, ``kl_weight``,
  ``stage_schedule``) as typed dataclasses, checked against the params and the evaluation before any trial;
* ``trial.py``: one trial, the family's own training entry point (``train_cvae``/``train_gan``, or the
  ldm's ``train_stage`` for vae, unet, finetune in turn: what ``dvc repro`` runs) with the trial's
  overrides, scored per epoch by the evaluation module;
* ``record.py``: each completed trial saved as a DVC experiment (``dvc exp show``);
* ``study.py``: storage (a journal file, or a database URL), the worker loop, resuming, workers, best,
  apply, plots.
"""
