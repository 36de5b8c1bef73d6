"""The quality gate: fail when a metric got worse than its baseline by more than its tolerance.

    spritegen gate --baseline ci/baseline --current metrics [--metrics fd kid] [--markdown report.md]
    spritegen gate --baseline main                    # metrics/*.json as committed at a git revision
    spritegen baseline update --reason "why"          # make the current metrics the new ci baseline

DVC shows numbers but never fails (``dvc metrics diff`` exits 0 whatever happened), so this is ours.
Exit codes: 0 nothing regressed, 1 a gated metric regressed (the table names it), 2 the comparison
is not possible (missing baseline, missing metric or family, another backend or sample count).

The rule, for each gated metric of each family (docs/gate.md explains why):

    delta      = current - baseline, signed so that a positive ``worse`` means worse
    ci_tol     = sqrt(h_base**2 + h_cur**2)       h = half-width of a 95% interval, (hi - lo) / 2
    margin_tol = max(margins[metric], relative_margin * |baseline|)
    tolerance  = ci_tol | margin_tol | max(ci_tol, margin_tol)       per ``gate.tolerance``
    worse > tolerance -> "regressed";  better > tolerance -> "improved";  else "ok"

The metric maths (:func:`tolerance`, :func:`judge`, :func:`gate`) is pure; files and git are read in
:func:`load_metrics_dir`, :func:`load_baseline`; printing lives in :func:`main`.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from spritegen.config import ConfigError, from_dict
from spritegen.errors import UserError

Direction = Literal["lower", "higher"]
Status = Literal["regressed", "improved", "ok"]

DEFAULT_METRICS = [
    "fd", "fd_detail", "kid", "clip_score", "r_precision", "attr_colour_acc_pixels",
    "attr_type_acc", "collapse_score", "coverage", "near_copy_fraction",
]
EXIT_PASS, EXIT_REGRESSED, EXIT_ERROR = 0, 1, 2
BASELINE_DIR = Path("ci/baseline")
NOTE_FILES = ("BASELINE.json", "BASELINE.md")  # written beside a baseline; never family metrics


@dataclass
class GateConfig:
    """``gate`` section of params.yaml: which metrics are gated and how much worse is tolerated."""

    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), metadata={
        "doc": "metrics gated in every family (names as in metrics/<family>.json)"})
    tolerance: Literal["ci", "margin", "ci_or_margin"] = field(default="ci_or_margin", metadata={
        "doc": "ci: the combined 95% half-widths of baseline and current; margin: the configured margin; "
               "ci_or_margin: the larger of the two"})
    margins: dict[str, float] = field(default_factory=dict, metadata={
        "ge": 0, "doc": "absolute margin per metric, in the metric's own units (e.g. {fd: 2.0, coverage: 0.02})"})
    relative_margin: float = field(default=0.0, metadata={
        "ge": 0, "doc": "margin for every metric as a fraction of |baseline value| (0.05 = 5%); "
                        "the larger of this and margins[metric] applies"})
    families: list[str] | None = field(default=None, metadata={
        "doc": "families gated (null: every family in the baseline)"})

    def validate(self) -> None:
        if not self.metrics:
            raise ConfigError("metrics: at least one metric must be gated")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics: duplicate names in {self.metrics}")
        for name, m in self.margins.items():
            if m < 0:
                raise ConfigError(f"margins.{name}: {m} must be >= 0")
        if self.families is not None and not self.families:
            raise ConfigError("families: an empty list gates nothing; use null for every family")


class GateError(UserError):
    """The comparison is not possible; the message names each file/metric/family at fault (exit 2)."""


# --- the metrics files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    value: float
    direction: Direction
    ci95: tuple[float, float] | None = None
    backend_id: str | None = None  # the metric's own feature space, when the file says (alignment, pixels...)


@dataclass
class FamilyMetrics:
    """One ``metrics/<family>.json`` (schema in docs/architecture.md)."""

    family: str
    backend: str
    backend_id: str
    n_generated: int
    n_reference: int | None
    metrics: dict[str, Metric]
    source: str  # where it was read, for messages


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_family(data: Any, source: str) -> FamilyMetrics | None:
    """A family metrics file, ``None`` for another JSON (evaluator.json, summary.json, a note).

    A file "claims" to be a family file when it has a top-level ``family``; such a file that does not
    follow the schema is an error, never silently skipped.
    """
    if not isinstance(data, dict) or "family" not in data:
        return None
    problems = []
    if not isinstance(data["family"], str) or not data["family"]:
        problems.append("'family' must be a non-empty string")
    for key in ("backend", "backend_id"):
        if not isinstance(data.get(key), str):
            problems.append(f"'{key}' missing or not a string")
    if not isinstance(data.get("n_generated"), int) or isinstance(data.get("n_generated"), bool):
        problems.append("'n_generated' missing or not an integer")
    raw = data.get("metrics")
    metrics: dict[str, Metric] = {}
    if not isinstance(raw, dict):
        problems.append("'metrics' missing or not a mapping")
        raw = {}
    for name, m in raw.items():
        if not isinstance(m, dict):
            problems.append(f"metrics.{name}: expected a mapping with value/direction")
            continue
        value, direction, ci = m.get("value"), m.get("direction"), m.get("ci95")
        if value is None:
            # A metric the evaluation could not compute is written as null: absent for the gate.
            continue
        if not _number(value):
            problems.append(f"metrics.{name}.value: {value!r} is not a finite number")
            continue
        if direction not in ("lower", "higher"):
            problems.append(f"metrics.{name}.direction: {direction!r} is not 'lower' or 'higher'")
            continue
        if ci is not None:
            if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) for c in ci)
                    and ci[0] <= ci[1]):
                problems.append(f"metrics.{name}.ci95: {ci!r} is not [low, high]")
                continue
            ci = (float(ci[0]), float(ci[1]))
        bid = m.get("backend_id")
        metrics[name] = Metric(float(value), direction, ci, bid if isinstance(bid, str) else None)
    if problems:
        raise GateError(f"{source}: not a valid family metrics file: " + "; ".join(problems))
    n_ref = data.get("n_reference")
    return FamilyMetrics(data["family"], data["backend"], data["backend_id"], data["n_generated"],
                         n_ref if isinstance(n_ref, int) else None, metrics, source)


def _collect(files: dict[str, str]) -> tuple[dict[str, FamilyMetrics], list[str]]:
    """``{source: json text}`` -> ``({family: metrics}, [ignored sources])``."""
    families: dict[str, FamilyMetrics] = {}
    ignored = []
    for source, text in sorted(files.items()):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GateError(f"{source}: not valid JSON ({e})") from None
        fam = parse_family(data, source)
        if fam is None:
            ignored.append(source)
            continue
        if fam.family in families:
            raise GateError(f"family {fam.family!r} appears twice: {families[fam.family].source} and {source}")
        families[fam.family] = fam
    return families, ignored


def load_metrics_dir(path: str | Path) -> tuple[dict[str, FamilyMetrics], list[str]]:
    """Every family file in a folder (``*.json``) or one JSON file."""
    path = Path(path)
    if path.is_file():
        files = {str(path): path.read_text()}
    elif path.is_dir():
        files = {str(p): p.read_text() for p in sorted(path.glob("*.json"))}
    else:
        raise GateError(f"{path}: no such metrics folder or file")
    return _collect(files)


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def load_git_metrics(rev: str, folder: str = "metrics", repo: str | Path = ".") -> tuple[dict[str, FamilyMetrics], list[str]]:
    """The ``folder/*.json`` files committed at ``rev`` (``git ls-tree`` + ``git show``)."""
    repo = Path(repo)
    top = _git(["rev-parse", "--show-toplevel"], repo)
    if top.returncode != 0:
        raise GateError(f"baseline {rev!r}: not a file or folder, and {repo.resolve()} is not in a git repository")
    root = Path(top.stdout.strip())
    commit = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    if commit.returncode != 0:
        raise GateError(f"baseline {rev!r}: no such file or folder, and not a git revision")
    sha = commit.stdout.strip()
    folder = folder.strip("/")
    listing = _git(["ls-tree", "--name-only", sha, "--", f"{folder}/"], root)
    names = [n for n in listing.stdout.splitlines() if n.endswith(".json")]
    if not names:
        raise GateError(f"baseline {rev!r} ({sha[:10]}): no {folder}/*.json committed at that revision")
    files = {}
    for name in names:
        shown = _git(["show", f"{sha}:{name}"], root)
        if shown.returncode != 0:
            raise GateError(f"baseline {rev}:{name}: unreadable ({shown.stderr.strip()})")
        files[f"{rev}:{name}"] = shown.stdout
    return _collect(files)


def load_baseline(spec: str, repo: str | Path = ".") -> tuple[dict[str, FamilyMetrics], list[str], str]:
    """``--baseline``: a folder, a JSON file, ``REV`` (its metrics/) or ``REV:FOLDER``.

    Returns (families, ignored files, a sentence saying what it resolved to). A path wins over a
    revision of the same name.
    """
    path = Path(spec)
    if path.is_dir():
        fams, ignored = load_metrics_dir(path)
        what = f"folder {path}"
    elif path.is_file():
        fams, ignored = load_metrics_dir(path)
        what = f"file {path}"
    else:
        rev, _, folder = spec.partition(":")
        fams, ignored = load_git_metrics(rev, folder or "metrics", repo)
        sha = _git(["rev-parse", "--short", f"{rev}^{{commit}}"], Path(repo)).stdout.strip()
        what = f"git revision {rev} ({sha}), {folder or 'metrics'}/*.json"
    if not fams:
        raise GateError(f"baseline {spec!r} ({what}): no family metrics file in it"
                        + (f" (ignored: {', '.join(ignored)})" if ignored else "")
                        + (f"; create the ci baseline with `ci/quality.sh --update-baseline \"reason\"`"
                           if path.is_dir() else ""))
    return fams, ignored, what


# --- the rule --------------------------------------------------------------------------------------


def half_width(ci: tuple[float, float] | None) -> float | None:
    return None if ci is None else (ci[1] - ci[0]) / 2


def ci_tolerance(baseline: Metric, current: Metric) -> float | None:
    """95% half-width of the difference of two independent estimates: sqrt(h_b**2 + h_c**2).

    A side without an interval counts as exact (0). ``None`` when neither side has one.
    """
    hb, hc = half_width(baseline.ci95), half_width(current.ci95)
    if hb is None and hc is None:
        return None
    return math.hypot(hb or 0.0, hc or 0.0)


def margin_tolerance(name: str, baseline: Metric, cfg: GateConfig) -> float:
    return max(cfg.margins.get(name, 0.0), cfg.relative_margin * abs(baseline.value))


def tolerance(name: str, baseline: Metric, current: Metric, cfg: GateConfig) -> tuple[float, str]:
    """(tolerance, how it was set: "ci", "margin", "none")."""
    ci = ci_tolerance(baseline, current)
    margin = margin_tolerance(name, baseline, cfg)
    if cfg.tolerance == "ci":
        if ci is None:
            raise GateError(f"metric {name!r}: gate.tolerance is 'ci' but neither side has a ci95 "
                            f"(use tolerance: ci_or_margin with a margin)")
        return ci, "ci"
    if cfg.tolerance == "margin":
        return margin, "margin" if margin > 0 else "none"
    if ci is None or margin > ci:
        return margin, "margin" if margin > 0 else "none"
    return ci, "ci"


def worsening(baseline: float, current: float, direction: Direction) -> float:
    """How much worse ``current`` is than ``baseline`` (negative: better)."""
    return current - baseline if direction == "lower" else baseline - current


def judge(baseline: float, current: float, direction: Direction, tol: float) -> Status:
    worse = worsening(baseline, current, direction)
    if worse > tol:
        return "regressed"
    if -worse > tol:
        return "improved"
    return "ok"


@dataclass
class Check:
    family: str
    metric: str
    baseline: Metric
    current: Metric
    tolerance: float
    tolerance_from: str
    status: Status

    @property
    def delta(self) -> float:
        return self.current.value - self.baseline.value

    @property
    def direction(self) -> Direction:
        return self.baseline.direction


@dataclass
class GateResult:
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "regressed"]

    @property
    def improved(self) -> list[Check]:
        return [c for c in self.checks if c.status == "improved"]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSED if self.regressed else EXIT_PASS


def gate(baseline: dict[str, FamilyMetrics], current: dict[str, FamilyMetrics], cfg: GateConfig,
         metrics: list[str] | None = None) -> GateResult:
    """Compare every gated metric of every gated family. Raises GateError listing *all* problems."""
    metrics = list(metrics or cfg.metrics)
    families = list(cfg.families) if cfg.families is not None else sorted(baseline)
    problems, notes, checks = [], [], []
    for fam in families:
        b, c = baseline.get(fam), current.get(fam)
        if b is None:
            problems.append(f"family {fam!r}: missing from the baseline (families there: {sorted(baseline)})")
        if c is None:
            problems.append(f"family {fam!r}: missing from the current metrics (families there: {sorted(current)})")
        if b is None or c is None:
            continue
        where = f"family {fam!r} ({b.source} vs {c.source})"
        if (b.backend, b.backend_id) != (c.backend, c.backend_id):
            problems.append(f"{where}: backend_id differs: baseline {b.backend}/{b.backend_id}, current "
                            f"{c.backend}/{c.backend_id}; numbers from two feature extractors never compare")
        if b.n_generated != c.n_generated:
            problems.append(f"{where}: n_generated differs: baseline {b.n_generated}, current {c.n_generated} "
                            f"(another sample count; run the same profile as the baseline)")
        if b.n_reference is not None and c.n_reference is not None and b.n_reference != c.n_reference:
            problems.append(f"{where}: n_reference differs: baseline {b.n_reference}, current {c.n_reference}")
        for name in metrics:
            bm, cm = b.metrics.get(name), c.metrics.get(name)
            if bm is None:
                problems.append(f"{fam}/{name}: missing in the baseline {b.source} (has: {sorted(b.metrics)})")
            if cm is None:
                problems.append(f"{fam}/{name}: missing in the current {c.source} (has: {sorted(c.metrics)})")
            if bm is None or cm is None:
                continue
            if bm.direction != cm.direction:
                problems.append(f"{fam}/{name}: direction differs (baseline {bm.direction}, current {cm.direction})")
                continue
            if bm.backend_id and cm.backend_id and bm.backend_id != cm.backend_id:
                problems.append(f"{fam}/{name}: backend_id differs: baseline {bm.backend_id}, current {cm.backend_id}")
                continue
            try:
                tol, how = tolerance(name, bm, cm, cfg)
            except GateError as e:
                problems.append(f"{fam}/{name}: {e}")
                continue
            checks.append(Check(fam, name, bm, cm, tol, how, judge(bm.value, cm.value, bm.direction, tol)))
    if problems:
        raise GateError("the gate cannot compare these metrics:\n  - " + "\n  - ".join(problems))
    extra = sorted(set(current) - set(families))
    if extra and cfg.families is None:
        notes.append(f"not gated (no baseline yet): {', '.join(extra)}; add them with `spritegen baseline update`")
    if any(c.tolerance_from == "none" for c in checks):
        notes.append("some metrics have neither a ci95 nor a margin: any worsening of them fails")
    return GateResult(checks, notes)


# --- rendering ---------------------------------------------------------------------------------------

ARROW = {"lower": "↓", "higher": "↑"}


def fmt(x: float) -> str:
    return f"{x:.4g}"


def fmt_metric(m: Metric) -> str:
    return fmt(m.value) + (f" ±{fmt(half_width(m.ci95))}" if m.ci95 else "")


def fmt_delta(c: Check) -> str:
    rel = f" ({c.delta / abs(c.baseline.value):+.1%})" if c.baseline.value else ""
    return f"{c.delta:+.4g}{rel}"


def rows(result: GateResult) -> list[list[str]]:
    return [[c.family, c.metric, ARROW[c.direction], fmt_metric(c.baseline), fmt_metric(c.current),
             fmt_delta(c), f"{fmt(c.tolerance)} ({c.tolerance_from})", c.status] for c in result.checks]


HEADER = ["family", "metric", "better", "baseline", "current", "Δ", "tolerance", "status"]


def summary(result: GateResult) -> str:
    def name(c: Check) -> str:
        return f"{c.family}/{c.metric} ({fmt(c.baseline.value)} → {fmt(c.current.value)}, tolerance {fmt(c.tolerance)})"

    lines = []
    if result.regressed:
        lines.append(f"FAILED: {len(result.regressed)} metric(s) regressed: " + "; ".join(map(name, result.regressed)))
    else:
        lines.append(f"passed: {len(result.checks)} metric(s) checked, none regressed")
    if result.improved:
        lines.append("improved: " + "; ".join(map(name, result.improved)))
    return "\n".join(lines)


def markdown(result: GateResult, baseline_what: str, current_what: str, cfg: GateConfig) -> str:
    icon = {"regressed": "❌ regressed", "improved": "✅ improved", "ok": "ok"}
    verdict = "❌ FAILED" if result.regressed else "✅ passed"
    out = [f"## Quality gate: {verdict}", "",
           f"Baseline: {baseline_what} · current: {current_what} · tolerance: `{cfg.tolerance}`", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r, c in zip(rows(result), result.checks):
        r[-1] = icon[c.status]
        if c.status != "ok":
            r[1] = f"**{r[1]}**"
        out.append("| " + " | ".join(r) + " |")
    out += ["", *(f"- {line}" for line in summary(result).splitlines()), *(f"- {n}" for n in result.notes)]
    return "\n".join(out) + "\n"


def print_table(result: GateResult, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    style = {"regressed": "bold red", "improved": "bold green", "ok": ""}
    table = Table(title=title, title_justify="left")
    for h in HEADER:
        table.add_column(h, justify="right" if h in ("baseline", "current", "Δ", "tolerance") else "left")
    for r, c in zip(rows(result), result.checks):
        table.add_row(*r, style=style[c.status])
    console.print(table)
    for line in result.notes:
        console.print(f"note: {line}", highlight=False)
    console.print(summary(result), style="bold red" if result.regressed else "bold green", highlight=False)


# --- commands ---------------------------------------------------------------------------------------


def load_config(params: Path | None, preset: str | None) -> GateConfig:
    """Only the ``gate`` section is read: the gate runs on metrics files and must not import (or need)
    the modules of every other stage; the pipeline validated the whole params file when it ran."""
    from spritegen.params import raw_params

    return from_dict(GateConfig, raw_params(params, preset).get("gate"), "gate")


def main(args) -> int:
    cfg = load_config(args.params, args.preset)
    base, base_ignored, base_what = load_baseline(args.baseline)
    cur, _ = load_metrics_dir(args.current)
    if not cur:
        raise GateError(f"{args.current}: no family metrics file in it (run the pipeline first)")
    result = gate(base, cur, cfg, args.metrics or None)
    cur_what = f"{args.current}"
    print(f"baseline: {base_what}" + (f" (ignored: {', '.join(base_ignored)})" if base_ignored else ""))
    print(f"current:  {cur_what}")
    print_table(result, f"quality gate (tolerance: {cfg.tolerance})")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result, base_what, cur_what, cfg))
        print(f"wrote {args.markdown}")
    return result.exit_code


def _head_commit(repo: Path) -> tuple[str | None, bool]:
    sha = _git(["rev-parse", "HEAD"], repo)
    if sha.returncode != 0:
        return None, False
    dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], repo).stdout.strip())
    return sha.stdout.strip(), dirty


def baseline_update_main(args) -> int:
    """``spritegen baseline update --reason``: copy the current metrics into ci/baseline/ with a note.

    Updating the baseline is a deliberate act: it needs a reason, records it with the date and the
    commit the metrics came from, shows what changes, and prints the commit command to run.
    """
    reason = (args.reason or "").strip()
    if len(reason) < 8:
        raise UserError("baseline update: --reason must say why the baseline changes (a sentence)")
    cur, ignored = load_metrics_dir(args.current)
    if not cur:
        raise GateError(f"{args.current}: no family metrics file in it (run `ci/quality.sh` or the pipeline first)")
    out: Path = args.out
    cfg = load_config(args.params, args.preset)
    missing = sorted(set(cfg.families or []) - set(cur))
    if missing:
        raise GateError(f"{args.current}: gated families missing: {missing}")
    for fam in cur.values():  # every gated metric must be there, or the next gate run fails
        absent = [m for m in cfg.metrics if m not in fam.metrics]
        if absent:
            raise GateError(f"{fam.source}: gated metric(s) missing: {absent}")

    # What changes: the old baseline against the new one, when there is an old one.
    old = {}
    if out.is_dir():
        try:
            old, _ = load_metrics_dir(out)
        except GateError as e:
            print(f"note: the old baseline is unreadable ({e}); replacing it")
    if old:
        try:
            print_table(gate(old, cur, GateConfig(**{**cfg.__dict__, "families": sorted(set(old) & set(cur))})),
                        f"baseline change: {out} (old) → {args.current} (new)")
        except GateError as e:
            print(f"note: old and new baselines do not compare ({e})")

    out.mkdir(parents=True, exist_ok=True)
    removed = []
    for fam in old.values():
        p = Path(fam.source)
        if fam.family not in cur and p.parent.resolve() == out.resolve():
            p.unlink()
            removed.append(p.name)
    for fam in cur.values():
        target = out / f"{fam.family}.json"
        if not target.exists() or not target.samefile(fam.source):
            shutil.copyfile(fam.source, target)
    repo = Path(".").resolve()
    commit, dirty = _head_commit(repo)
    first = next(iter(cur.values()))
    note = {
        "reason": reason,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "source": str(args.current),
        "families": sorted(cur),
        "backend": first.backend,
        "backend_id": sorted({f.backend_id for f in cur.values()}),
        "n_generated": sorted({f.n_generated for f in cur.values()}),
    }
    (out / "BASELINE.json").write_text(json.dumps(note, indent=2) + "\n")
    history = out / "BASELINE.md"
    old_text = history.read_text() if history.exists() else ""
    head, _, rest = old_text.partition("\n## ")
    if not head.startswith("# "):
        head, rest = "# ci baseline history\n\nNewest first. Written by `spritegen baseline update`.\n", old_text
    entry = (f"## {note['date']}: {reason}\n\n- commit: `{commit or 'none'}`{' (with uncommitted changes)' if dirty else ''}\n"
             f"- families: {', '.join(note['families'])}; backend {first.backend} "
             f"{', '.join(note['backend_id'])}; n_generated {note['n_generated']}\n"
             + (f"- removed: {', '.join(removed)}\n" if removed else "") + "\n")
    history.write_text(head.rstrip("\n") + "\n\n" + entry + (("## " + rest) if rest.strip() else ""))
    print(f"baseline updated in {out}: {', '.join(f'{f}.json' for f in sorted(cur))}"
          + (f"; removed {', '.join(removed)}" if removed else ""))
    if dirty:
        print("warning: the working tree has uncommitted changes; commit them with the baseline")
    print("now commit it, so the change is visible in review:")
    print(f"  git add {shlex.quote(str(out))} && git commit -m {shlex.quote('ci baseline: ' + reason)}")
    return 0
