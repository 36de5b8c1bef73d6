"""``GET /api/v1/experiments``: the runs ``spritegen compare`` shows, as JSON, with links to sample grids.

The rows come from spritegen.evaluate.compare (``dvc exp show`` + each metrics file's intervals), so the
page and the command line can never disagree. A run's sample grid is the ``sample`` stage's
``samples/<family>/grid.png``: the same prompts and seeds for every family and run, so the gallery's
columns are comparable. The workspace's is read from disk; a committed run's from DVC at its commit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from spritegen.errors import UserError
from spritegen.serve.models import Refused, WORKSPACE


def grid_path(family: str) -> str:
    return f"samples/{family}/grid.png"


class Experiments:
    """``dvc exp show`` read at most once per ``ttl`` seconds (it takes seconds; the page polls it)."""

    def __init__(self, project: Path, families: list[str], ttl: float, metrics: list[str] | None = None):
        self.project, self.families, self.ttl, self.metrics = project, families, ttl, metrics
        self._at, self._value, self._lock = -1e18, None, threading.Lock()

    def table(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self.ttl:
                self._value, self._at = self._read(), time.monotonic()
            return self._value

    def revs(self) -> dict[str, str]:
        """Run name -> commit, for the committed runs DVC lists (experiments and their baseline commits)."""
        return {r["name"]: r["rev"] for r in self.table()["runs"] if r["kind"] != "workspace"}

    def _read(self) -> dict[str, Any]:
        from spritegen.evaluate.compare import build, exp_show, runs_from_exp_show
        from spritegen.evaluate.gate import DEFAULT_METRICS

        try:
            data = exp_show(self.project)
            runs, notes = runs_from_exp_show(data)
        except UserError as e:  # not a DVC project: the workspace alone (its grids), and why
            from spritegen.evaluate.compare import Run

            runs, notes, data = [Run(WORKSPACE, WORKSPACE, "workspace")], [str(e)], None
        ref, rows, params = None, [], []
        try:
            if data is None:
                raise UserError("no metrics without DVC: run the pipeline (`dvc repro`) in a DVC project")
            runs, ref, rows, params, notes = build(data, [], None, None, self.metrics or DEFAULT_METRICS, repo=self.project)
        except UserError as e:  # runs without metrics yet: still listed, so their models can be served
            notes.append(str(e))
        return {
            "reference": ref.label if ref else None,
            "runs": [{"name": r.name if r.kind != "workspace" else WORKSPACE, "label": r.label, "rev": r.rev,
                      "kind": r.kind, "families": sorted(r.families),
                      "grids": {f: f"/api/v1/experiments/{r.name if r.kind != 'workspace' else WORKSPACE}/grid/{f}.png"
                                for f in self.families}}
                     for r in runs],
            "rows": [{"family": row.family, "metric": row.metric, "direction": row.direction,
                      "cells": [None if m is None else {"value": m.value, "ci95": list(m.ci95) if m.ci95 else None, "mark": mark}
                                for m, mark in row.cells]}
                     for row in rows],
            "params": [{"key": k, "values": v} for k, v in params],
            "notes": notes,
        }

    def grid(self, name: str, family: str) -> bytes:
        """A run's sample grid PNG; the name must be a listed run (never a path)."""
        if family not in self.families:
            raise Refused(f"family {family!r} is not served; served: {', '.join(self.families)}", "family")
        runs = {r["name"]: r for r in self.table()["runs"]}
        if name not in runs:
            raise Refused(f"unknown experiment {name!r}; runs: {', '.join(sorted(runs)) or 'none'}", "experiment")
        run = runs[name]
        if run["kind"] == "workspace":
            path = self.project / grid_path(family)
            if not path.is_file():
                raise FileNotFoundError(f"{grid_path(family)} missing: run `dvc repro sample@{family}`")
            return path.read_bytes()
        from dvc.api import DVCFileSystem

        try:
            return DVCFileSystem(str(self.project), rev=run["rev"]).read_bytes("/" + grid_path(family))
        except Exception as e:  # noqa: BLE001 - not in the cache, not an output of that run: say so
            raise FileNotFoundError(f"{name}: {grid_path(family)} is not available ({e})") from None
