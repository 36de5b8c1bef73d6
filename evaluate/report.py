"""The comparison across families: one table and one figure from every ``metrics/<family>.json``.

    spritegen report [--metrics metrics] [--plots plots/report]

Writes ``metrics/summary.json`` (per family: value, ci95, floor of each metric, and a normalised score
(value - floor) / (worst baseline - floor) that puts metrics on one scale: 0 = as good as real data, 1 = as
bad as the worst trivial baseline), ``metrics/summary.md`` (the table, and prompt following: each
attribute accuracy beside the same images' accuracy under shuffled prompts) and ``plots/report/summary.png``.
Families measured with different backend_ids are listed, but flagged: their numbers do not compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from spritegen.errors import UserError

SKIP = {"summary.json", "evaluator.json"}
TABLE_METRICS = ("fd", "fd_detail", "kid", "precision", "recall", "coverage", "clip_score", "r_precision",
                 "attr_colour_acc_pixels", "attr_type_acc", "perceptual_within_prompt", "collapse_score", "near_copy_fraction")


def read_metrics(folder: Path) -> dict[str, dict]:
    """``{family: metrics JSON}`` for every file in ``folder`` that follows the metrics schema."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        if path.name in SKIP:
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "metrics" in data and "backend_id" in data:
            out[data.get("family") or path.stem] = data
    return out


def normalised(entry: dict) -> float | None:
    """(value - floor) / (worst baseline - floor), in the metric's bad direction: 0 = real data, 1 = worst
    trivial baseline, < 0 better than the floor. None without a floor or baselines, or when the worst
    baseline is within 5% of the floor (the metric cannot tell trivial from real there)."""
    floor, base = entry.get("floor"), [v for v in entry.get("baselines", {}).values() if v is not None]
    if floor is None or not base:
        return None
    worst = max(base) if entry["direction"] == "lower" else min(base)
    span = worst - floor
    # a baseline as good as real data (noise's precision, say) makes the metric uninformative here
    if not math.isfinite(span) or abs(span) <= 0.05 * max(abs(floor), abs(worst), 1e-12):
        return None
    return (entry["value"] - floor) / span


def summarise(results: dict[str, dict]) -> dict:
    ids = {f: r["backend_id"] for f, r in results.items()}
    return {
        "backend_ids": ids,
        "comparable": len(set(ids.values())) <= 1,
        "families": {
            f: {name: {"value": m["value"], "ci95": m.get("ci95"), "floor": m.get("floor"),
                       "direction": m["direction"], "normalised": normalised(m)}
                for name, m in r["metrics"].items()} | {"n_generated": r.get("n_generated")}
            for f, r in results.items()
        },
    }


def markdown_table(results: dict[str, dict], names=TABLE_METRICS) -> str:
    def cell(m):
        if m is None:
            return "–"
        ci = m.get("ci95")
        return f"{m['value']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")

    names = [n for n in names if any(n in r["metrics"] for r in results.values())]
    head = "| metric | better | floor | " + " | ".join(results) + " | mean image | noise | train copies |"
    lines = [head, "|" + "---|" * (4 + len(results) + 2)]
    for n in names:
        any_m = next(r["metrics"][n] for r in results.values() if n in r["metrics"])
        floor = any_m.get("floor")
        b = any_m.get("baselines", {})
        fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
        lines.append(f"| {n} | {'↓' if any_m['direction'] == 'lower' else '↑'} | {fmt(floor)} | "
                     + " | ".join(cell(r["metrics"].get(n)) for r in results.values())
                     + f" | {fmt(b.get('mean_image'))} | {fmt(b.get('noise'))} | {fmt(b.get('train_copies'))} |")
    ids = sorted({r["backend_id"] for r in results.values()})
    note = ("" if len(ids) <= 1 else "\n**Warning: families were scored with different backends "
            f"({', '.join(ids)}); their numbers do not compare.**\n")
    return "\n".join(lines) + "\n\nFloor: real train vs held-out sprites (alignment and memorisation: held-out sprites). " \
        f"Backend: {', '.join(ids)}.\n" + note


def following_table(results: dict[str, dict]) -> str:
    """Prompt following per family: accuracy, shuffled chance, lift [95%], permutation p, and the real
    sprites' lift (what the instrument can see at all); then the lift per prompted class. Empty when no
    family has attribute lifts."""
    rows, classes = [], []
    for family, r in results.items():
        for name, m in r["metrics"].items():
            lift = m.get("lift")
            if not lift:
                continue
            ci = lift.get("ci95")
            real = (m["floor"] - m["floor_chance"]) if m.get("floor") is not None and m.get("floor_chance") is not None else None
            rows.append(f"| {family} | {name} | {m['value']:.3f} | {m['chance']:.3f} | {lift['value']:+.3f}"
                        + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "") + f" | {lift['p_value']:.2g} | "
                        + ("–" if real is None else f"{real:+.3f}") + " |")
            per = m.get("per_class") or {}
            named = sorted((c for c, v in per.items() if v["share"] > 0), key=lambda c: -per[c]["lift"])
            never = sorted(c for c, v in per.items() if v["share"] == 0)
            if per:
                classes.append(f"- {family} `{name}`: " + ", ".join(f"{c} {per[c]['lift']:+.2f}" for c in named)
                               + (f"; never named by the scorer, so not measured: {', '.join(never)}" if never else ""))
    if not rows:
        return ""
    head = ("\n## Prompt following\n\nAccuracy against the same images under shuffled prompts: a generator "
            "that ignores its prompt has lift 0 whatever the scorer's bias; p is a permutation test.\n\n"
            "| family | metric | accuracy | shuffled chance | lift [95%] | p | real sprites' lift |\n|---|---|---|---|---|---|---|")
    per_class = ("\n\nLift per prompted class (the share of its prompts' images called that class, minus the "
                 "share of all images called it):\n\n" + "\n".join(classes)) if classes else ""
    return "\n".join([head, *rows]) + per_class + "\n"


def plot_summary(summary: dict, path: Path) -> None:
    """One panel: the normalised score of each table metric per family (0 = real data, 1 = worst baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(summary["families"])
    names = [n for n in TABLE_METRICS if any(summary["families"][f].get(n, {}).get("normalised") is not None for f in fams)]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4))
    width = 0.8 / max(1, len(fams))
    for i, f in enumerate(fams):
        vals = [summary["families"][f].get(n, {}).get("normalised") for n in names]
        ax.bar([j + i * width for j in range(len(names))], [v if v is not None else 0 for v in vals], width, label=f)
    ax.axhline(0, color="green", lw=1, ls="--", label="real data (floor)")
    ax.axhline(1, color="red", lw=1, ls="--", label="worst trivial baseline")
    ax.set_xticks([j + width * (len(fams) - 1) / 2 for j in range(len(names))], names, rotation=45, ha="right")
    ax.set_ylabel("(value - floor) / (worst baseline - floor)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> int:
    from spritegen.io import write_json

    folder = Path(args.metrics)
    results = read_metrics(folder)
    if not results:
        raise UserError(f"{folder} holds no metrics/<family>.json files: run `spritegen evaluate --family ...` first")
    summary = summarise(results)
    write_json(summary, folder / "summary.json")
    text = markdown_table(results) + following_table(results)
    (folder / "summary.md").write_text(text)
    plot_summary(summary, Path(args.plots) / "summary.png")
    print(text)
    return 0
