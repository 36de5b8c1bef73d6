"""Run-dependent values (wall-clock times, throughput, memory) kept out of the files that are compared.

``dvc.lock`` hashes every stage output and git tracks the metrics files: both must come out equal, bit
for bit, from two runs of the same commit on the same kind of machine. So nothing that depends on how
busy the machine was goes there. Each stage writes those values to ``logs/<name>.json`` instead
(git-ignored and not a DVC output), where a person or a benchmark can read them:

    log_run("evaluator", {"train_seconds": 71.2})     # -> logs/evaluator.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOG_DIR = Path("logs")


def log_run(name: str, values: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Write ``values`` (timings, images/s, peak memory...) to ``<folder>/<name>.json`` (default ``logs/``),
    replacing that stage's previous record. ``name`` may contain ``/`` (``ldm/vae``)."""
    from spritegen.io import write_json

    path = Path(folder or LOG_DIR) / f"{name}.json"
    write_json(values, path)
    return path
