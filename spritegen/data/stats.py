"""``spritegen data stats``: what the data set holds, as rich tables.

    spritegen data stats [--metadata data/metadata.jsonl] [--prepared data/prepared] [--report FILE]

Counts per split, per primary type and primary colour, size classes and variants, raw image sizes, and
the files skipped by the metadata stage with their reasons. Works with whatever exists: metadata only
(before ``prepare``) or the prepared folder too. Reads files only; changes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from spritegen.data.dataset import SPLITS, SpriteRecord
from spritegen.data.vocab import COLOUR_NAMES, SIZE_CLASSES, TYPES, VARIANTS
from spritegen.errors import UserError


def _split_records(prepared: Path) -> dict[str, list[SpriteRecord]]:
    out = {}
    for split in SPLITS:
        path = prepared / f"{split}.jsonl"
        if path.exists():
            out[split] = [
                SpriteRecord.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.strip()
            ]
    return out


def count_table(title: str, names: tuple[str, ...], groups: dict[str, list[SpriteRecord]], key) -> Table:
    """Rows: ``names`` (those that occur); columns: each group plus the total. ``key(record) -> name``."""
    table = Table(title=title)
    table.add_column(title.split(" ")[0])
    for g in groups:
        table.add_column(g, justify="right")
    if len(groups) > 1:
        table.add_column("total", justify="right")
    counts = {g: Counter(key(r) for r in recs) for g, recs in groups.items()}
    for name in names:
        row = [counts[g][name] for g in groups]
        if sum(row):
            table.add_row(name, *map(str, row), *([str(sum(row))] if len(groups) > 1 else []))
    return table


def main(args) -> int:
    console = Console()
    metadata_path, prepared = Path(args.metadata), Path(args.prepared)
    report_path = Path(args.report) if getattr(args, "report", None) else metadata_path.parent / "ingest_report.json"
    splits = _split_records(prepared)
    if splits:
        groups = splits
    elif metadata_path.exists():
        from spritegen.data.metadata import read_metadata

        groups = {"all": read_metadata(metadata_path)}
    else:
        raise UserError(
            f"neither {metadata_path} nor {prepared}/*.jsonl exist: run `spritegen metadata` "
            "and `spritegen prepare` (or `dvc repro prepare`) first"
        )

    manifest_path = prepared / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        console.print(
            f"prepared: {m.get('resolution')}x{m.get('resolution')} px, background "
            f"{m.get('background')}, source {m.get('source')}, split seed {m.get('seed')}"
        )
    table = Table(title="splits")
    for col in ("split", "sprites", "species", "share"):
        table.add_column(col, justify="left" if col == "split" else "right")
    total = sum(len(v) for v in groups.values())
    for g, recs in groups.items():
        n_species = len({r.dex if r.dex is not None else r.name for r in recs})
        table.add_row(g, str(len(recs)), str(n_species), f"{len(recs) / max(total, 1):.1%}")
    console.print(table)
    console.print(count_table("type (primary)", TYPES, groups, lambda r: r.types[0]))
    console.print(count_table("colour (primary)", COLOUR_NAMES, groups, lambda r: r.primary_colour))
    console.print(count_table("colour (secondary)", COLOUR_NAMES, groups, lambda r: r.secondary_colour))
    console.print(count_table("size class", SIZE_CLASSES, groups, lambda r: r.size_class))
    console.print(count_table("variant", VARIANTS, groups, lambda r: r.variant))
    console.print(
        count_table("generation", tuple(str(g) for g in range(0, 10)), groups, lambda r: str(r.generation or 0))
    )

    everyone = [r for recs in groups.values() for r in recs]
    widths = np.array([r.extra.get("width", 0) for r in everyone])
    heights = np.array([r.extra.get("height", 0) for r in everyone])
    if widths.any():
        sizes = Table(title="raw image sizes (pixels)")
        for col in ("", "min", "median", "max"):
            sizes.add_column(col, justify="right")
        for name, v in (("width", widths), ("height", heights)):
            sizes.add_row(name, str(v.min()), f"{np.median(v):g}", str(v.max()))
        console.print(sizes)
        formats = Counter(f"{r.extra.get('format')} {r.extra.get('mode')}" for r in everyone)
        console.print("formats: " + ", ".join(f"{k}: {v}" for k, v in sorted(formats.items())))
    flagged = Counter(k for r in everyone for k in ("types_known", "size_known") if r.extra.get(k) is False)
    if flagged:
        console.print("flagged: " + ", ".join(f"{k}=false: {v}" for k, v in sorted(flagged.items())))
    prompts = [len(r.prompts) for r in everyone]
    console.print(
        f"prompts per sprite: min {min(prompts)}, max {max(prompts)}, "
        f"{len({p for r in everyone for p in r.prompts})} distinct in all"
    )

    if report_path.exists():
        report = json.loads(report_path.read_text())
        skipped = {k: v for k, v in report.get("skipped", {}).items() if v}
        console.print(f"ingest report: {report_path}")
        table = Table(title="skipped files")
        table.add_column("reason")
        table.add_column("files", justify="right")
        for reason, n in skipped.items():
            table.add_row(reason, str(n))
        for warning, n in report.get("warnings", {}).items():
            table.add_row(f"(kept, warning) {warning}", str(n))
        if report.get("not_selected"):
            table.add_row("(not selected: metadata.limit)", str(report["not_selected"]))
        if not skipped:
            table.add_row("none", "0")
        console.print(table)
        for s in report.get("skipped_files", [])[:20]:
            console.print(f"  {s['file']}: {s['reason']} ({s['detail']})")
    else:
        console.print(f"no ingest report at {report_path}")
    return 0
