"""Sources and the data stages end to end: fetch -> metadata -> prepare -> stats, on generated folders
(every bad-file kind included) and on the default pip-package source."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from spritegen import presets
from spritegen.cli import main as cli_main
from spritegen.data import sources
from spritegen.data.dataset import SPLITS, load_split
from spritegen.data.sources import DataConfig, fetch, read_descriptions
from spritegen.data.vocab import COLOURS
from spritegen.errors import UserError

@pytest.fixture(autouse=True)
def outside_the_repo(tmp_path, monkeypatch):
    # Stages read ./params.yaml when no --params is given: run in an empty folder so the tests see the
    # code's defaults (plus the preset they name), never the repository's own params.yaml.
    monkeypatch.chdir(tmp_path)


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _sprite(colour, size=(40, 48), alpha=True) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1
    if alpha:
        arr = np.zeros((h, w, 4), np.uint8)
        arr[inside] = (*colour, 255)
        return Image.fromarray(arr, "RGBA")
    arr = np.full((h, w, 3), 255, np.uint8)
    arr[inside] = colour
    return Image.fromarray(arr, "RGB")


def _bomb_header(path: Path, w: int, h: int) -> None:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


BAD_FILES = {
    "empty": "000-empty.png",
    "not_an_image": "000-text.png",
    "truncated": "000-cut.jpg",
    "too_many_pixels": "000-bomb.png",
    "blank": "000-clear.png",
}


@pytest.fixture
def user_folder(tmp_path) -> tuple[Path, Path, int]:
    """The seeds' layout: sprites named by national number + a CSV of descriptions; plus every bad kind."""
    folder = tmp_path / "my_sprites"
    folder.mkdir()
    colours = list(COLOURS.values())
    n_good = 0
    for dex in range(1, 25):
        colour = colours[dex % len(colours)]
        if dex % 3 == 0 and colour == COLOURS["white"]:
            colour = COLOURS["gray"]  # white on a white page with no outline and no alpha is blank indeed
        img = _sprite(colour, alpha=dex % 3 != 0)
        fmt = {0: "png", 1: "gif", 2: "png"}[dex % 3]
        if fmt == "gif":
            img = img.convert("RGBA").convert("P", palette=Image.ADAPTIVE)
        img.save(folder / f"{dex:03d}.{fmt}")
        n_good += 1
    sub = folder / "extra"
    sub.mkdir()
    _sprite(COLOURS["red"]).save(sub / "flamey.png")  # no national number: matched by file name
    n_good += 1
    (folder / BAD_FILES["empty"]).write_bytes(b"")
    (folder / BAD_FILES["not_an_image"]).write_text("not an image")
    _sprite(COLOURS["blue"], size=(64, 64), alpha=False).save(folder / "full.jpg")
    data = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / BAD_FILES["truncated"]).write_bytes(data[: len(data) // 2])
    _bomb_header(folder / BAD_FILES["too_many_pixels"], 30000, 30000)
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(folder / BAD_FILES["blank"])
    (folder / "notes.txt").write_text("my notes")
    (folder / ".DS_Store").write_bytes(b"\0\0")
    (folder / "looks_like.png").mkdir()  # a directory named like an image: reported, not silently skipped
    csv = folder.parent / "descriptions.csv"
    rows = ["national_number,description"]
    rows += [
        f'{dex},"Sprite {dex}. A {"fire and flying" if dex % 2 else "water"} type Pokémon."' for dex in range(1, 25)
    ]
    rows += ['flamey.png,"Flamey. A fire type Pokémon, small and red."', '999,"A Pokémon with no image"']
    csv.write_text("\n".join(rows) + "\n")
    return folder, csv, n_good


def _params(tmp_path: Path, sections: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def test_folder_fetch_is_deterministic_and_reports_what_it_did_not_copy(tmp_path, user_folder):
    folder, csv, n_good = user_folder
    cfg = DataConfig(source="folder", path=folder, descriptions=csv)
    a, b = tmp_path / "raw_a", tmp_path / "raw_b"
    fetch(cfg, a)
    fetch(cfg, b)
    assert tree_hash(a) == tree_hash(b)
    source = json.loads((a / "SOURCE.json").read_text())
    assert source["n_sprites"] == n_good + len(BAD_FILES)  # bad files are copied: metadata decides
    assert {x["file"] for x in source["not_copied"]} == {"notes.txt", ".DS_Store", "looks_like.png"}
    assert [x["reason"] for x in source["not_copied"] if x["file"] == "looks_like.png"] == ["a directory named like an image"]
    assert source["descriptions_unmatched"] == ["999"]
    sprites = {s["source_file"]: s for s in json.loads((a / "sprites.json").read_text())}
    assert sprites["006.png"]["description"].startswith("Sprite 6. A water type")
    assert sprites["006.png"]["name"] == "Charizard" and sprites["006.png"]["enriched"]  # from the packages
    assert sprites["extra/flamey.png"]["description"].startswith("Flamey.")
    assert str(tmp_path) not in (a / "sprites.json").read_text()  # no absolute paths: same bytes anywhere
    (a / "images" / "junk").write_text("x")
    fetch(cfg, a)  # a fetched folder is replaced whole
    assert not (a / "images" / "junk").exists()


def test_folder_pipeline_end_to_end(tmp_path, user_folder, capsys):
    folder, csv, n_good = user_folder
    p = _params(
        tmp_path,
        {
            "data": {"source": "folder", "path": str(folder), "descriptions": str(csv)},
            "prepare": {"resolution": 16, "splits": [0.6, 0.2, 0.2]},
        },
    )
    raw, out, prepared = tmp_path / "raw", tmp_path / "data", tmp_path / "data" / "prepared"
    assert cli_main(["data", "fetch", "--params", str(p), "--out", str(raw)]) == 0
    assert cli_main(["metadata", "--params", str(p), "--raw", str(raw), "--out", str(out)]) == 0
    console = capsys.readouterr().out
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["kept"] == n_good
    for reason, name in BAD_FILES.items():
        assert report["skipped"][reason] == 1, reason
        assert any(s["reason"] == reason and s["file"].endswith(Path(name).suffix) for s in report["skipped_files"])
        assert reason in console  # also on the console
    assert sum(report["skipped"].values()) == len(BAD_FILES)
    assert report["kept"] + sum(report["skipped"].values()) == report["total"]  # nothing dropped silently

    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == n_good
    by_file = {r["extra"]["source_file"]: r for r in records}
    assert by_file["006.png"]["types"] == ["fire", "flying"]  # from the packages (dex 6)
    assert by_file["extra/flamey.png"]["types"] == ["fire"]  # parsed from the user's description
    assert by_file["extra/flamey.png"]["primary_colour"] == "red"
    assert any(p.startswith("Flamey. A fire type") for p in by_file["extra/flamey.png"]["prompts"])
    assert all(len(r["prompts"]) >= 5 for r in records)

    assert (
        cli_main(
            [
                "prepare",
                "--params",
                str(p),
                "--raw",
                str(raw),
                "--metadata",
                str(out / "metadata.jsonl"),
                "--out",
                str(prepared),
            ]
        )
        == 0
    )
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert sum(manifest["splits"].values()) == n_good
    for split in SPLITS:
        s = load_split(prepared, split)
        assert s.resolution == 16 and len(s) == manifest["splits"][split]
    train = load_split(prepared, "train")
    assert (train.images[:, :, 0, 0] == 255).all()  # white background in every corner
    assert Image.open(prepared / "preview.png").size[0] > 16

    capsys.readouterr()
    assert cli_main(["data", "stats", "--metadata", str(out / "metadata.jsonl"), "--prepared", str(prepared)]) == 0
    stats = capsys.readouterr().out
    for word in ("train", "val", "test", "truncated", "too_many_pixels", "colour (primary)", "fire"):
        assert word in stats


def test_metadata_limit_takes_a_stratified_subset_and_says_so(tmp_path, user_folder):
    folder, csv, n_good = user_folder
    raw = tmp_path / "raw"
    fetch(DataConfig(source="folder", path=folder, descriptions=csv), raw)
    p = _params(tmp_path, {"metadata": {"limit": 10}})
    assert cli_main(["metadata", "--params", str(p), "--raw", str(raw), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ingest_report.json").read_text())
    assert report["kept"] == 10
    assert report["considered"] + report["not_selected"] == report["total"]
    first = (tmp_path / "metadata.jsonl").read_text()
    assert cli_main(["metadata", "--params", str(p), "--raw", str(raw), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "metadata.jsonl").read_text() == first  # deterministic


def test_descriptions_json_and_headerless_csv(tmp_path):
    j = tmp_path / "d.json"
    j.write_text(json.dumps({"a.png": "An ice type thing", "7": {"description": "Squirtle.", "types": "water"}}))
    d = read_descriptions(j)
    assert d["a.png"].text == "An ice type thing" and d["7"].types == ("water",)
    j.write_text(json.dumps([{"file": "b.png", "caption": "hello", "type1": "fire", "type2": "flying"}]))
    assert read_descriptions(j)["b.png"].types == ("fire", "flying")
    c = tmp_path / "d.csv"
    c.write_text("25,A yellow electric mouse, with red cheeks\n26,Raichu\n")
    d = read_descriptions(c)
    assert d["25"].text == "A yellow electric mouse, with red cheeks" and d["26"].dex == 26


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.json", "{not json", "not valid JSON"),
        ("d.json", "[1, 2]", "item 0 is not an object"),
        ("d.csv", "file,description\na.png,x\na.png,y\n", "appears twice"),
        ("d.csv", "", "is empty"),
        ("d.xml", "<a/>", "unsupported extension"),
    ],
)
def test_bad_descriptions_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_descriptions(path)


def test_folder_source_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        fetch(DataConfig(source="folder", path=tmp_path / "nope"), tmp_path / "raw")
    with pytest.raises(UserError, match="needs a folder"):
        fetch(DataConfig(source="folder"), tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="gave no image files"):
        fetch(DataConfig(source="folder", path=tmp_path / "empty"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-written


def test_fetch_refuses_to_replace_a_folder_it_did_not_write(tmp_path, user_folder):
    folder, _, _ = user_folder
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(UserError, match="--force"):
        fetch(DataConfig(source="folder", path=folder), precious)
    assert (precious / "thesis.tex").exists()
    with pytest.raises(UserError, match="inside the sprite folder"):
        fetch(DataConfig(source="folder", path=folder), folder / "raw")


def test_fetch_flags_override_params_and_path_implies_folder(tmp_path, user_folder, capsys):
    folder, csv, n_good = user_folder
    raw = tmp_path / "raw"
    assert cli_main(["data", "fetch", "--path", str(folder), "--descriptions", str(csv), "--out", str(raw)]) == 0
    assert json.loads((raw / "SOURCE.json").read_text())["source"] == "folder"
    console = capsys.readouterr().out
    assert "notes.txt" in console and "matched no image" in console and "data.enrich=false" in console
    assert cli_main(["data", "fetch", "--source", "pokemon", "--path", str(folder), "--out", str(raw)]) == 2
    assert "path/descriptions are for source 'folder'" in capsys.readouterr().err


def test_nothing_usable_still_writes_the_report(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_text("not an image")
    (folder / "b.png").write_bytes(b"")
    raw = tmp_path / "raw"
    fetch(DataConfig(source="folder", path=folder), raw)
    assert cli_main(["metadata", "--raw", str(raw), "--out", str(tmp_path)]) == 2
    report = json.loads((tmp_path / "ingest_report.json").read_text())
    assert report["skipped"]["not_an_image"] == 1 and report["skipped"]["empty"] == 1
    assert "ingest_report.json" in capsys.readouterr().err


def test_missing_raw_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["metadata", "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "spritegen data fetch" in capsys.readouterr().err


# --- pokesprite ----------------------------------------------------------------------------------------


def test_pokesprite_without_npm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"needs npm \(Node.js\).*install Node.js.*--source pokemon"):
        fetch(DataConfig(source="pokesprite"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_pokesprite_tarball_must_match_the_pinned_integrity(tmp_path):
    fake = tmp_path / "pokesprite-images-2.7.0.tgz"
    fake.write_bytes(b"not the real tarball")
    with pytest.raises(UserError, match="does not match the pinned sha512"):
        fetch(DataConfig(source="pokesprite"), tmp_path / "raw", tarball=fake)
    assert sources.POKESPRITE_INTEGRITY.startswith("sha512-")


# --- the default source ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_source_is_byte_identical_and_runs_tiny(tmp_path):
    a, b = tmp_path / "raw_a", tmp_path / "raw_b"
    fetch(DataConfig(), a)
    fetch(DataConfig(), b)
    ha = tree_hash(a)
    assert ha == tree_hash(b)
    assert len([k for k in ha if k.startswith("images/")]) == 1008
    sprites = json.loads((a / "sprites.json").read_text())
    charizard = next(s for s in sprites if s["dex"] == 6)
    assert charizard["types"] == ["fire", "flying"] and charizard["weight_kg"] == 90.5  # kg, not pounds
    assert charizard["abilities"] == ["blaze", "solar power"] and charizard["generation"] == 1
    raw_bytes = (a / "sprites.json").read_bytes()
    assert raw_bytes.endswith(b"}\n]\n") and b"\r" not in raw_bytes

    out = tmp_path / "data"
    assert cli_main(["metadata", "--preset", "tiny", "--raw", str(a), "--out", str(out)]) == 0
    records = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == presets.PRESETS["tiny"]["metadata"]["limit"]
    assert len({r["types"][0] for r in records}) >= 12  # a type-stratified subset, not the first 48
    assert (
        cli_main(
            [
                "prepare",
                "--preset",
                "tiny",
                "--raw",
                str(a),
                "--metadata",
                str(out / "metadata.jsonl"),
                "--out",
                str(out / "prepared"),
            ]
        )
        == 0
    )
    assert load_split(out / "prepared", "train").resolution == 16


def test_stats_before_prepare_and_without_anything(tmp_path, user_folder, capsys):
    folder, csv, _ = user_folder
    raw = tmp_path / "raw"
    fetch(DataConfig(source="folder", path=folder, descriptions=csv), raw)
    assert cli_main(["metadata", "--raw", str(raw), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    args = ["data", "stats", "--metadata", str(tmp_path / "metadata.jsonl"), "--prepared", str(tmp_path / "none")]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "all" in out and "empty" in out and "blank" in out
    assert cli_main(["data", "stats", "--metadata", str(tmp_path / "x.jsonl"), "--prepared", str(tmp_path)]) == 2
