"""Metadata stage: decode every raw sprite defensively, measure its colours, write its prompts.

    spritegen metadata [--raw data/raw] [--out data] [--preset tiny]

Reads ``data/raw/sprites.json`` (from ``spritegen data fetch``) and writes

* ``data/metadata.jsonl``: one :class:`~spritegen.data.dataset.SpriteRecord` per usable sprite, sorted by id;
* ``data/ingest_report.json``: every file that was not used, with its reason (counts by reason too).

Params read: the ``metadata`` section (``limit``, ``prompts_per_sprite``, ``seed``, ``captioner``,
``max_pixels``, ``colour_resolution``).

Colours are measured from the pixels (:mod:`spritegen.data.colour`), never looked up. Prompts are built
from the attributes in several styles (short, long, attribute list, the seeds' concatenated description,
name-based, ...), at least five per sprite; an optional captioner adds its own (:mod:`.captioner`).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from spritegen.data.captioner import CaptionError, load_captioner, validate_caption
from spritegen.data.colour import border_colour, colour_shares, foreground_mask, pick_colours
from spritegen.data.dataset import SpriteRecord
from spritegen.data.imageio import (
    DEFAULT_MAX_PIXELS,
    SKIP_REASONS,
    Decoded,
    Skip,
    composite,
    composite_array,
    decode_image,
)
from spritegen.data.vocab import SIZE_CLASSES, TYPES, VARIANTS
from spritegen.errors import UserError

# --- config -----------------------------------------------------------------------------------------

PROMPT_STYLES = ("short", "long", "attributes", "seeds", "name", "creature", "sprite", "draw", "tags", "variant")


@dataclass
class MetadataConfig:
    """``metadata`` section of params.yaml."""

    limit: int | None = field(
        default=None,
        metadata={
            "ge": 1,
            "doc": "keep only this many sprites: a deterministic subset stratified by primary type (ci/tiny)",
        },
    )
    prompts_per_sprite: int = field(
        default=6,
        metadata={
            "ge": 5,
            "le": len(PROMPT_STYLES),
            "doc": "prompts written per sprite (the first five styles always)",
        },
    )
    seed: int = field(default=0, metadata={"ge": 0, "doc": "seed of the subset choice and the extra prompt styles"})
    captioner: str | None = field(
        default=None,
        metadata={
            "doc": "optional 'module:Class' vision-language captioner adding prompts (see spritegen.data.captioner)"
        },
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "ge": 1,
            "doc": "refuse images with more pixels than this (read from the header: decompression bombs)",
        },
    )
    colour_resolution: int = field(
        default=128,
        metadata={"ge": 16, "le": 1024, "doc": "colours are measured on a copy shrunk to this longest side (speed)"},
    )


# --- attributes -------------------------------------------------------------------------------------

# Height thresholds in metres (tiny < 0.4 <= small < 0.9 <= medium < 1.5 <= large < 2.5 <= huge): roughly
# the 15/40/65/85 % quantiles of the 1,008 species, so classes are neither empty nor dominant.
_HEIGHT_EDGES = (0.4, 0.9, 1.5, 2.5)
_WEIGHT_EDGES = (5.0, 25.0, 80.0, 250.0)  # kilograms, used only when the height is unknown


def size_class(height_m: float | None, weight_kg: float | None) -> str | None:
    """One of ``SIZE_CLASSES`` from the height (or the weight when the height is unknown); None if neither."""
    if height_m:
        return SIZE_CLASSES[sum(height_m >= e for e in _HEIGHT_EDGES)]
    if weight_kg:
        return SIZE_CLASSES[sum(weight_kg >= e for e in _WEIGHT_EDGES)]
    return None


_TYPE_RE = re.compile(
    r"\b(" + "|".join(TYPES) + r")\b(?:\s*(?:and|/|&|-)\s*\b(" + "|".join(TYPES) + r")\b)?[\s-]*types?\b", re.IGNORECASE
)


def types_from_text(text: str | None) -> tuple[str, ...]:
    """'A fire and flying type Pokémon' -> ('fire', 'flying'); () when the text names no type."""
    if not text:
        return ()
    m = _TYPE_RE.search(text)
    if not m:
        return ()
    return tuple(dict.fromkeys(t.lower() for t in m.groups() if t))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptAttributes:
    """What a prompt may mention. ``types`` is empty when unknown (a user's sprite without a description)."""

    name: str | None
    types: tuple[str, ...]
    primary_colour: str
    secondary_colour: str
    size_class: str | None
    generation: int | None = None
    abilities: tuple[str, ...] = ()
    variant: str = "regular"
    form: str | None = None
    height_m: float | None = None
    weight_kg: float | None = None
    description: str | None = None  # the user's own text (folder source): used as the seeds-style prompt


def _prompt(style: str, a: PromptAttributes) -> str | None:
    """One prompt in ``style``; None when the attributes cannot support it (e.g. no name)."""
    colours = (
        a.primary_colour if a.secondary_colour == a.primary_colour else f"{a.primary_colour} and {a.secondary_colour}"
    )
    typed = f"{_join(list(a.types))} type " if a.types else ""
    size = f"{a.size_class} " if a.size_class else ""
    shiny = "shiny " if a.variant == "shiny" else ""
    if style == "short":
        return f"{_article(a.primary_colour)} {a.primary_colour} {typed}Pokémon"
    if style == "long":
        text = f"{_article(size or colours)} {size}{colours} {typed}Pokémon"
        if a.generation:
            text += f" from generation {a.generation}"
        if a.abilities:
            text += f", with the abilit{'ies' if len(a.abilities) > 1 else 'y'} {_join(list(a.abilities))}"
        if a.variant == "shiny":
            text += ", in its shiny colouring"
        return text + "."
    if style == "attributes":
        parts = [*a.types, a.primary_colour]
        if a.secondary_colour != a.primary_colour:
            parts.append(a.secondary_colour)
        if a.size_class:
            parts.append(a.size_class)
        if a.variant != "regular":
            parts.append(a.variant)
        return ", ".join(parts)
    if style == "seeds":
        if a.description:
            return " ".join(a.description.split())
        sentences = [f"{a.name}." if a.name else "A Pokémon."]
        if a.types:
            sentences.append(f"{_article(a.types[0]).capitalize()} {_join(list(a.types))} type Pokémon.")
        if a.abilities:
            sentences.append(f"Abilities: {', '.join(a.abilities)}.")
        body = f"Mostly {a.primary_colour}" + (
            f" with {a.secondary_colour}." if a.secondary_colour != a.primary_colour else "."
        )
        sentences.append(body)
        if a.height_m and a.weight_kg:
            sentences.append(f"It is {a.height_m:g} m tall and weighs {a.weight_kg:g} kg.")
        if a.generation:
            sentences.append(f"Generation {a.generation}.")
        return " ".join(sentences)
    if style == "name":
        if not a.name:
            return f"a sprite of {_article(shiny or colours)} {shiny}{colours} Pokémon"
        return f"{a.name}, {_article(shiny or colours)} {shiny}{colours} {typed}Pokémon"
    if style == "creature":
        kind = f" of the {_join(list(a.types))} type" if a.types else ""
        return f"{_article(size or a.primary_colour)} {size}{a.primary_colour} creature{kind}"
    if style == "sprite":
        return f"pixel art sprite of {_article(colours)} {colours} {typed}pokemon"
    if style == "draw":
        detail = f" with {a.secondary_colour} details" if a.secondary_colour != a.primary_colour else ""
        return f"draw {_article(size or a.primary_colour)} {size}{a.primary_colour} pokemon{detail}"
    if style == "tags":
        return " ".join([a.primary_colour, *a.types, "pokemon"] + ([a.size_class] if a.size_class else []))
    if style == "variant":
        who = a.name or "a Pokémon"
        if a.variant == "shiny":
            return f"the shiny form of {who}, {colours}"
        if a.variant == "form" and a.form:
            return f"{who} in its {a.form.replace('-', ' ')} form, {colours}"
        return f"{who} in its usual {colours} colouring"
    raise ValueError(f"unknown prompt style {style!r}")


def build_prompts(attrs: PromptAttributes, n: int, seed: int, key: str) -> tuple[str, ...]:
    """``n`` distinct prompts: the first five styles always, then extra styles in a seeded per-sprite order.

    The order depends only on (seed, key), so adding or removing other sprites never changes a sprite's
    prompts.
    """
    core, extra = list(PROMPT_STYLES[:5]), list(PROMPT_STYLES[5:])
    random.Random(f"{seed}:{key}").shuffle(extra)
    prompts: list[str] = []
    for style in core + extra:
        text = _prompt(style, attrs)
        if text and text not in prompts:
            prompts.append(text)
        if len(prompts) == n:
            break
    return tuple(prompts)


# --- subset (limit) ---------------------------------------------------------------------------------


def stratified_order(sprites: list[dict], seed: int) -> list[dict]:
    """All sprites, ordered so that every prefix is a type-stratified sample.

    Within each primary type the sprites are shuffled (seeded); sprite ``r`` of a type with ``n`` members
    gets the position ``(r + 0.5) / n``, and the whole list is sorted by position: the first ``k`` then
    hold each type in proportion to its size (largest-remainder allocation), deterministically.
    """
    groups: dict[str, list[dict]] = {}
    for s in sorted(sprites, key=lambda s: s["key"]):
        groups.setdefault((s.get("types") or ["unknown"])[0], []).append(s)
    ranked = []
    for t, members in sorted(groups.items()):
        random.Random(f"{seed}:{t}").shuffle(members)
        ranked += [((r + 0.5) / len(members), t, s["key"], s) for r, s in enumerate(members)]
    return [s for *_, s in sorted(ranked, key=lambda x: x[:3])]


# --- one sprite -------------------------------------------------------------------------------------


def _thumbnail(decoded: Decoded, side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A copy at most ``side`` pixels long (box filter), with its alpha; colours measured on it are the
    same as at full size for all practical purposes, at a fraction of the cost."""
    h, w = decoded.rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return decoded.rgb, decoded.alpha
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if decoded.alpha is None:
        return np.asarray(Image.fromarray(decoded.rgb).resize(size, Image.BOX)), None
    rgba = np.dstack([decoded.rgb, decoded.alpha])
    small = np.asarray(Image.fromarray(rgba, "RGBA").resize(size, Image.BOX))  # Pillow premultiplies alpha
    return np.ascontiguousarray(small[..., :3]), np.ascontiguousarray(small[..., 3])


def measure(decoded: Decoded, side: int) -> tuple[str, str, dict[str, float]] | None:
    """(primary, secondary, shares) of a decoded sprite; None when it has no foreground (blank)."""
    rgb, alpha = _thumbnail(decoded, side)
    if alpha is not None:
        mask = alpha >= 128
        rgb = composite_array(rgb, alpha)  # colours under alpha 0 are meaningless
        background = (255, 255, 255)
    else:
        background = border_colour(rgb)  # white for the artworks; whatever a user's folder uses
        mask = foreground_mask(rgb, background)
    if not mask.any():
        return None
    shares = colour_shares(rgb, background, mask=mask)
    primary, secondary = pick_colours(shares, background)
    return primary, secondary, {k: round(v, 3) for k, v in sorted(shares.items())}


def _display_name(sprite: dict) -> str | None:
    return sprite.get("name") or None


def build_record(
    sprite: dict, decoded: Decoded, cfg: MetadataConfig, captioner=None
) -> tuple[SpriteRecord | None, list[tuple[str, str]]]:
    """A SpriteRecord (or None when the image is blank) and the warnings raised for this sprite."""
    warnings: list[tuple[str, str]] = []
    measured = measure(decoded, cfg.colour_resolution)
    if measured is None:
        return None, warnings
    primary, secondary, shares = measured
    types = tuple(t for t in sprite.get("types") or () if t in TYPES)[:2]
    types_known = bool(types)
    if not types:
        types = types_from_text(sprite.get("description"))
        types_known = bool(types)
    size = size_class(sprite.get("height_m"), sprite.get("weight_kg"))
    variant = sprite.get("variant") if sprite.get("variant") in VARIANTS else "regular"
    attrs = PromptAttributes(
        name=_display_name(sprite),
        types=types,
        primary_colour=primary,
        secondary_colour=secondary,
        size_class=size,
        generation=sprite.get("generation"),
        abilities=tuple(sprite.get("abilities") or ()),
        variant=variant,
        form=sprite.get("form"),
        height_m=sprite.get("height_m"),
        weight_kg=sprite.get("weight_kg"),
        description=sprite.get("description"),
    )
    prompts = list(build_prompts(attrs, cfg.prompts_per_sprite, cfg.seed, sprite["key"]))
    extra = {
        "width": decoded.width,
        "height": decoded.height,
        "format": decoded.format,
        "mode": decoded.mode,
        "colour_shares": shares,
    }
    if decoded.frames > 1:
        extra["frames"] = decoded.frames
    for k in ("form", "source_file", "description", "base_stats", "species"):
        if sprite.get(k):
            extra[k] = sprite[k]
    if not types_known:
        # SpriteRecord needs a type for its conditioning ids; "normal" stands in, flagged so that
        # evaluation and stats can leave these sprites out of type metrics.
        types = ("normal",)
        extra["types_known"] = False
        warnings.append(("types_unknown", "no type in the source data or the description; 'normal' used"))
    if size is None:
        size = "medium"
        extra["size_known"] = False
        warnings.append(("size_unknown", "no height or weight; size class 'medium' used"))
    if captioner is not None:
        context = {
            "name": attrs.name,
            "types": list(attrs.types),
            "primary_colour": primary,
            "secondary_colour": secondary,
            "size_class": attrs.size_class,
            "description": attrs.description,
        }
        try:
            reply = validate_caption(captioner.caption(Image.fromarray(composite(decoded)), context))
        except CaptionError as e:
            warnings.append(("captioner_invalid", str(e)[:300]))
        except Exception as e:  # noqa: BLE001 - a model call may fail in any way; one sprite must not stop the run
            warnings.append(("captioner_failed", f"{type(e).__name__}: {str(e)[:200]}"))
        else:
            prompts += [p for p in reply.pop("prompts", []) if p not in prompts]
            if reply:
                extra["captioner"] = reply
    record = SpriteRecord(
        id=sprite["key"],
        name=attrs.name or Path(sprite["file"]).stem,
        types=types,
        primary_colour=primary,
        secondary_colour=secondary,
        size_class=size,
        variant=variant,
        prompts=tuple(prompts),
        dex=sprite.get("dex"),
        generation=sprite.get("generation"),
        abilities=attrs.abilities,
        height_m=sprite.get("height_m"),
        weight_kg=sprite.get("weight_kg"),
        file=sprite["file"],
        extra=extra,
    )
    return record, warnings


# --- the stage --------------------------------------------------------------------------------------


def read_raw(raw: Path) -> tuple[list[dict], dict]:
    """``sprites.json`` and ``SOURCE.json`` of a fetched raw folder."""
    sprites_path, source_path = raw / "sprites.json", raw / "SOURCE.json"
    if not sprites_path.exists() or not source_path.exists():
        raise UserError(f"{raw} has no sprites.json/SOURCE.json: run `spritegen data fetch --out {raw}` first")
    try:
        sprites = json.loads(sprites_path.read_text(encoding="utf-8"))
        source = json.loads(source_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{raw}: sprites.json or SOURCE.json is not valid JSON ({e}); fetch again") from None
    if not isinstance(sprites, list) or not all(isinstance(s, dict) and "key" in s and "file" in s for s in sprites):
        raise UserError(f"{sprites_path}: expected a list of objects with 'key' and 'file'")
    return sprites, source


def run(cfg: MetadataConfig, raw: Path) -> tuple[list[SpriteRecord], dict]:
    """Decode, measure and describe the raw sprites; returns the records and the ingest report."""
    sprites, source = read_raw(raw)
    captioner = load_captioner(cfg.captioner) if cfg.captioner else None  # fails before any work
    order = stratified_order(sprites, cfg.seed) if cfg.limit else sorted(sprites, key=lambda s: s["key"])
    records: list[SpriteRecord] = []
    skipped: list[dict] = []
    warned: list[dict] = []
    considered = 0
    for sprite in order:
        if cfg.limit and len(records) >= cfg.limit:
            break
        considered += 1
        result = decode_image(raw / sprite["file"], cfg.max_pixels)
        record = None
        if isinstance(result, Decoded):
            record, warnings = build_record(sprite, result, cfg, captioner)
            warned += [{"key": sprite["key"], "file": sprite["file"], "warning": w, "detail": d} for w, d in warnings]
            if record is None:
                result = Skip("blank", SKIP_REASONS["blank"])
        if isinstance(result, Skip):
            skipped.append(
                {"key": sprite["key"], "file": sprite["file"], "reason": result.reason, "detail": result.detail}
            )
        else:
            records.append(record)
    records.sort(key=lambda r: r.id)
    skipped.sort(key=lambda s: s["key"])
    warned.sort(key=lambda w: (w["key"], w["warning"]))
    report = {
        "source": source.get("source"),
        "total": len(sprites),
        "considered": considered,
        "kept": len(records),
        "not_selected": len(sprites) - considered,  # beyond metadata.limit: not looked at, not a failure
        "limit": cfg.limit,
        "skipped": {reason: sum(s["reason"] == reason for s in skipped) for reason in SKIP_REASONS},
        "skipped_files": skipped,
        "warnings": dict(sorted(Counter(w["warning"] for w in warned).items())),
        "warning_files": warned,
        "not_copied_by_fetch": source.get("not_copied", []),
    }
    return records, report


def write_metadata(records: list[SpriteRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n")


def read_metadata(path: Path) -> list[SpriteRecord]:
    if not path.exists():
        raise UserError(f"{path} missing: run `spritegen metadata` (or `dvc repro metadata`) first")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(SpriteRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise UserError(f"{path}, line {n}: not a SpriteRecord ({e})") from None
    return records


def main(args) -> int:
    from spritegen.data.sources import dump_json
    from spritegen.params import load_section

    cfg: MetadataConfig = load_section("metadata", args.params, args.preset)
    records, report = run(cfg, Path(args.raw))
    out = Path(args.out)
    dump_json(report, out / "ingest_report.json")  # written even when nothing is usable: it says why
    print_report(report, out)
    if not records:
        raise UserError(
            f"no usable sprite in {args.raw}: skipped {_nonzero(report['skipped'])}; "
            f"every file's reason is in {out / 'ingest_report.json'}"
        )
    write_metadata(records, out / "metadata.jsonl")
    return 0


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def print_report(report: dict, out: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    line = f"kept [bold]{report['kept']}[/bold] of {report['considered']} sprites considered"
    if report["not_selected"]:
        line += f" ({report['not_selected']} more not selected: metadata.limit={report['limit']})"
    console.print(line + (f" -> {out / 'metadata.jsonl'}" if out and report["kept"] else ""))
    skipped = _nonzero(report["skipped"])
    if skipped or report["warnings"]:
        table = Table(title="files skipped or flagged", show_lines=False)
        table.add_column("reason")
        table.add_column("files", justify="right")
        table.add_column("meaning")
        for reason, n in skipped.items():
            table.add_row(f"skipped: {reason}", str(n), SKIP_REASONS[reason])
        for warning, n in report["warnings"].items():
            table.add_row(f"warning: {warning}", str(n), "kept, see ingest_report.json")
        console.print(table)
        for s in report["skipped_files"][:20]:
            console.print(f"  {s['file']}: {s['reason']} ({s['detail']})")
        if len(report["skipped_files"]) > 20:
            console.print(f"  ... {len(report['skipped_files']) - 20} more in ingest_report.json")
