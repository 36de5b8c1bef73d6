"""Optuna sweeps over learning-rate balances, KL weights and stage schedules.

Not built yet (a later issue): search spaces will be YAML files in this folder, and a trial will call
the same training entry points as `dvc exp run -S`, so there is no separate sweep trainer.
"""
