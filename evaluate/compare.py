"""Experiments side by side: quality metrics with confidence intervals, and the params that differ.

    spritegen compare                         # every experiment + its baseline commit + the workspace
    spritegen compare lr2 ep5 --format markdown --out compare.md
    spritegen compare --format csv|html --out FILE

Runs are listed by ``dvc exp show --json``. That output drops list values from metrics files (DVC keeps
numbers and strings only), so each run's ``ci95`` is read from the metrics file itself: committed runs
(experiments are commits) with ``git show REV:PATH``, the workspace from disk. Metrics files are
``cache: false``, so they are in git.

A value is marked better (▲) or worse (▼) than the reference run when the difference exceeds the
combined 95% half-widths ``sqrt(h_ref**2 + h_run**2)``: the gate's ``ci`` rule (docs/gate.md).
Without an interval on either side, no mark is given: the difference cannot be judged.
"""

from __future__ import annotations

import csv
import html
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spritegen.errors import UserError
from spritegen.evaluate.gate import (
    ARROW, DEFAULT_METRICS, FamilyMetrics, GateError, Metric, ci_tolerance, fmt, half_width, judge, load_config, parse_family,
)

Mark = Literal["better", "worse", "same", ""]


@dataclass
class Run:
    """One column of the comparison: the workspace, a baseline commit, or an experiment."""

    name: str
    rev: str  # a commit sha, or "workspace"
    kind: Literal["workspace", "baseline", "experiment"]
    parent: str | None = None  # an experiment's baseline commit
    params: dict[str, Any] = field(default_factory=dict)
    deps: dict[str, str | None] = field(default_factory=dict)
    metric_files: dict[str, Any] = field(default_factory=dict)  # path -> data, as dvc shows it
    families: dict[str, FamilyMetrics] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "baseline":
            return f"{self.name} ({self.rev[:7]})" if self.name and self.name != self.rev else self.rev[:7]
        return self.name


# --- dvc exp show --json -------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _state(entry: dict, kind: str, parent: str | None, name: str | None, notes: list[str]) -> Run | None:
    rev = entry.get("rev") or "?"
    label = "workspace" if kind == "workspace" else (name or entry.get("name") or rev[:7])
    data = entry.get("data")
    if entry.get("error") or not data:
        err = (entry.get("error") or {}).get("msg") if isinstance(entry.get("error"), dict) else entry.get("error")
        notes.append(f"{label}: skipped ({err or 'no data'})")
        return None
    params: dict[str, Any] = {}
    for path, res in (data.get("params") or {}).items():
        flat = flatten((res or {}).get("data") or {})
        params.update({(k if path == "params.yaml" else f"{path}:{k}"): v for k, v in flat.items()})
    deps = {p: (d or {}).get("hash") for p, d in (data.get("deps") or {}).items()}
    files = {p: (res or {}).get("data") for p, res in (data.get("metrics") or {}).items()}
    return Run(label if kind != "baseline" else (entry.get("name") or rev), rev, kind, parent, params, deps, files)


def runs_from_exp_show(data: list[dict]) -> tuple[list[Run], list[str]]:
    """The runs in ``dvc exp show --json`` output (DVC 3), in its order, and notes on skipped ones."""
    if not isinstance(data, list):
        raise UserError("dvc exp show --json: unexpected output (not a list of revisions)")
    runs, notes = [], []
    for entry in data:
        kind = "workspace" if entry.get("rev") == "workspace" else "baseline"
        run = _state(entry, kind, None, None, notes)
        if run:
            runs.append(run)
        for exp_range in entry.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            state = executor.get("state") if isinstance(executor, dict) else None
            name = exp_range.get("name")
            if state not in (None, "success"):
                notes.append(f"{name or '?'}: {state}, not shown")
                continue
            for rev in exp_range.get("revs") or []:
                run = _state(rev, "experiment", entry.get("rev"), name or rev.get("name"), notes)
                if run:
                    runs.append(run)
    return runs, notes


def exp_show(repo: Path = Path(".")) -> list[dict]:
    """``dvc exp show --json`` in ``repo`` (the DVC of this Python, so the versions match)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo,
                              capture_output=True, text=True)
    except OSError as e:
        raise UserError(f"could not run dvc: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        msg = next((ln for ln in err if "ERROR" in ln), err[-1] if err else f"exit code {proc.returncode}")
        if "not inside of a DVC repository" in proc.stderr:
            msg = f"{repo.resolve()} is not in a DVC repository: run spritegen compare in the project"
        raise UserError(f"dvc exp show failed: {msg}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise UserError("dvc exp show --json printed something that is not JSON") from None


def read_full_metrics(run: Run, repo: Path = Path(".")) -> dict[str, Any]:
    """Each metrics file's full contents (with ci95): from disk for the workspace, else ``git show``.

    Falls back to what dvc showed (no intervals) when the file is not readable that way.
    """
    out = {}
    for path, shown in run.metric_files.items():
        text = None
        if run.kind == "workspace":
            p = repo / path
            text = p.read_text() if p.is_file() else None
        else:
            proc = subprocess.run(["git", "show", f"{run.rev}:./{path}"], cwd=repo, capture_output=True, text=True)
            text = proc.stdout if proc.returncode == 0 else None
        try:
            out[path] = json.loads(text) if text is not None else shown
        except json.JSONDecodeError:
            out[path] = shown
    return out


def attach_families(run: Run, files: dict[str, Any], notes: list[str]) -> None:
    for path, data in files.items():
        try:
            fam = parse_family(data, f"{run.label}:{path}")
        except GateError as e:
            notes.append(str(e))
            continue
        if fam is not None:
            run.families[fam.family] = fam


# --- the comparison ----------------------------------------------------------------------------------


def select(runs: list[Run], wanted: list[str], reference: str | None) -> tuple[list[Run], Run]:
    """The runs to show (reference first, workspace last) and the reference run."""
    def find(key: str) -> Run:
        for r in runs:
            if key in (r.name, r.label, r.rev) or (len(key) >= 4 and r.rev.startswith(key)):
                return r
        raise UserError(f"no run named {key!r}; runs: {', '.join(r.label for r in runs)}")

    chosen = [find(w) for w in wanted] if wanted else [r for r in runs if r.kind != "workspace"]
    if reference:
        ref = find(reference)
    else:
        exp = next((r for r in chosen if r.kind == "experiment"), None)
        ref = next((r for r in runs if exp and r.rev == exp.parent), None) or next(
            (r for r in runs if r.kind == "baseline"), None) or runs[0]
    workspace = next((r for r in runs if r.kind == "workspace"), None)
    ordered = [ref] + [r for r in chosen if r is not ref and r is not workspace]
    if workspace is not None and workspace is not ref:
        ordered.append(workspace)
    return ordered, ref


def significance(ref: Metric | None, other: Metric | None) -> Mark:
    """better/worse: the difference exceeds the combined 95% half-widths; same: it does not."""
    if ref is None or other is None or ref.direction != other.direction:
        return ""
    if ref.backend_id and other.backend_id and ref.backend_id != other.backend_id:
        return ""  # two feature spaces: the numbers do not compare
    tol = ci_tolerance(ref, other)
    if tol is None:
        return ""
    return {"improved": "better", "regressed": "worse", "ok": "same"}[judge(ref.value, other.value, ref.direction, tol)]


@dataclass
class MetricRow:
    family: str
    metric: str
    direction: str
    cells: list[tuple[Metric | None, Mark]]


def metric_rows(runs: list[Run], ref: Run, metrics: list[str]) -> list[MetricRow]:
    families = sorted({f for r in runs for f in r.families})
    rows = []
    for fam in families:
        for name in metrics:
            values = [r.families.get(fam) and r.families[fam].metrics.get(name) for r in runs]
            if not any(values):
                continue
            refm = ref.families.get(fam) and ref.families[fam].metrics.get(name)
            cells = [(m or None, "" if r is ref else significance(refm or None, m or None))
                     for r, m in zip(runs, values)]
            direction = next(m.direction for m in values if m)
            rows.append(MetricRow(fam, name, direction, cells))
    return rows


def differing_params(runs: list[Run], with_deps: bool = True) -> list[tuple[str, list[str]]]:
    """``[(key, [value per run])]`` for params (and dependency hashes) that are not equal in all runs."""
    out = []
    keys = sorted({k for r in runs for k in r.params})
    for k in keys:
        vals = [r.params.get(k, None) for r in runs]
        if any(v != vals[0] for v in vals):
            out.append((k, ["—" if k not in r.params else _short(r.params[k]) for r in runs]))
    if with_deps:
        for k in sorted({k for r in runs for k in r.deps}):
            vals = [r.deps.get(k) for r in runs]
            if any(v != vals[0] for v in vals):
                out.append((f"dep {k}", [(v or "—")[:8] for v in vals]))
    return out


def _short(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


# --- rendering ---------------------------------------------------------------------------------------

SYMBOL = {"better": " ▲", "worse": " ▼", "same": "", "": ""}


def cell_text(m: Metric | None, mark: Mark) -> str:
    if m is None:
        return "—"
    return fmt(m.value) + (f" ±{fmt(half_width(m.ci95))}" if m.ci95 else "") + SYMBOL[mark]


def legend(ref: Run) -> str:
    return (f"values: estimate ±half-width of its 95% interval; ▲/▼: better/worse than {ref.label} by more than "
            f"the combined half-widths sqrt(h1²+h2²); no mark: within them, or no interval to judge by")


def render_rich(runs, ref, rows, params, notes, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=None if file is None and sys.stdout.isatty() else 160)
    t = Table(title="quality metrics (↓ lower is better, ↑ higher is better)", title_justify="left")
    t.add_column("family")
    t.add_column("metric")
    for r in runs:
        t.add_column(r.label + (" (ref)" if r is ref else ""), justify="right")
    style = {"better": "green", "worse": "red"}
    for row in rows:
        t.add_row(row.family, f"{row.metric} {ARROW.get(row.direction, '')}",
                  *(f"[{style[k]}]{cell_text(m, k)}[/]" if k in style else cell_text(m, k) for m, k in row.cells))
    console.print(t)
    if params:
        p = Table(title="params that differ", title_justify="left")
        p.add_column("param")
        for r in runs:
            p.add_column(r.label, justify="right")
        for key, vals in params:
            p.add_row(key, *vals)
        console.print(p)
    console.print(legend(ref), style="dim", highlight=False)
    for n in notes:
        console.print(f"note: {n}", highlight=False)


def render_markdown(runs, ref, rows, params, notes) -> str:
    heads = [r.label + (" (ref)" if r is ref else "") for r in runs]
    out = ["### Quality metrics", "", "| family | metric | " + " | ".join(heads) + " |",
           "|---|---|" + "---:|" * len(runs)]
    for row in rows:
        cells = [f"**{cell_text(m, k)}**" if k in ("better", "worse") else cell_text(m, k) for m, k in row.cells]
        out.append(f"| {row.family} | {row.metric} {ARROW.get(row.direction, '')} | " + " | ".join(cells) + " |")
    if params:
        out += ["", "### Params that differ", "", "| param | " + " | ".join(r.label for r in runs) + " |",
                "|---|" + "---:|" * len(runs)]
        out += [f"| `{k}` | " + " | ".join(vals) + " |" for k, vals in params]
    out += ["", f"_{legend(ref)}_"] + [f"- note: {n}" for n in notes]
    return "\n".join(out) + "\n"


def render_csv(runs, ref, rows, params, notes) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "rev", "kind", "family", "name", "value", "ci_low", "ci_high", "direction", "vs_reference"])
    for row in rows:
        for r, (m, k) in zip(runs, row.cells):
            if m is not None:
                lo, hi = m.ci95 or ("", "")
                w.writerow([r.label, r.rev, "metric", row.family, row.metric, m.value, lo, hi, m.direction,
                            "reference" if r is ref else k])
    for key, vals in params:
        for r, v in zip(runs, vals):
            w.writerow([r.label, r.rev, "param", "", key, v, "", "", "", ""])
    return buf.getvalue()


def render_html(runs, ref, rows, params, notes) -> str:
    e = html.escape
    head = "".join(f"<th>{e(r.label)}{' (ref)' if r is ref else ''}</th>" for r in runs)
    body = "".join(
        f"<tr><td>{e(row.family)}</td><td>{e(row.metric)} {ARROW.get(row.direction, '')}</td>"
        + "".join(f'<td class="{k}">{e(cell_text(m, k))}</td>' for m, k in row.cells) + "</tr>\n" for row in rows)
    ptable = ""
    if params:
        ptable = ("<h2>Params that differ</h2><table><tr><th>param</th>"
                  + "".join(f"<th>{e(r.label)}</th>" for r in runs) + "</tr>\n"
                  + "".join(f"<tr><td><code>{e(k)}</code></td>" + "".join(f"<td>{e(v)}</td>" for v in vals)
                            + "</tr>\n" for k, vals in params) + "</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>spritegen compare</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
            ".better{color:#070;font-weight:bold}.worse{color:#b00;font-weight:bold}</style></head><body>"
            f"<h2>Quality metrics</h2><table><tr><th>family</th><th>metric</th>{head}</tr>\n{body}</table>"
            f"{ptable}<p><small>{e(legend(ref))}</small></p>"
            + "".join(f"<p>note: {e(n)}</p>" for n in notes) + "</body></html>\n")


def render_text(runs, ref, rows, params, notes) -> str:
    buf = io.StringIO()
    render_rich(runs, ref, rows, params, notes, file=buf)
    return buf.getvalue()


RENDER = {"table": render_text, "markdown": render_markdown, "csv": render_csv, "html": render_html}


def build(data: list[dict], wanted: list[str], reference: str | None, metrics: list[str] | None,
          default_metrics: list[str] = DEFAULT_METRICS, read=read_full_metrics, repo: Path = Path(".")):
    """From ``dvc exp show --json`` output to what is rendered: (runs, ref, metric rows, params, notes)."""
    runs, notes = runs_from_exp_show(data)
    if not runs:
        raise UserError("dvc exp show lists no runs (a repository without a commit?): "
                        "commit, run the pipeline (`dvc repro`) and its experiments (`dvc exp run`) first")
    if not any(r.kind == "experiment" for r in runs):
        notes.insert(0, "no experiments yet (`dvc exp run -S key=value`); comparing the workspace with HEAD")
    shown, ref = select(runs, wanted, reference)
    for r in shown:
        attach_families(r, read(r, repo), notes)
    available = {m for r in shown for f in r.families.values() for m in f.metrics}
    if not available:
        raise UserError("no metrics/<family>.json in any run: run the pipeline (`dvc repro`) first")
    names = list(metrics or default_metrics)
    missing = [m for m in names if m not in available]
    if metrics and missing:
        notes.append(f"not in any run: {', '.join(missing)}")
    names = [m for m in names if m in available] or sorted(available)
    return shown, ref, metric_rows(shown, ref, names), differing_params(shown), notes


def main(args) -> int:
    cfg = load_config(args.params, args.preset)
    data = exp_show(Path("."))
    shown, ref, rows, params, notes = build(data, args.experiments, args.reference, args.metrics, cfg.metrics)
    if args.format == "table" and args.out is None:
        render_rich(shown, ref, rows, params, notes)
        return 0
    text = RENDER[args.format](shown, ref, rows, params, notes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out} ({len(shown)} runs, {len(rows)} metric rows)")
    else:
        sys.stdout.write(text)
    return 0
