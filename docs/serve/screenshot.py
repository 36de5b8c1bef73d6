"""The README's screenshots of the web page: serve a project, drive Debian's chromium, save PNGs.

    python docs/serve/screenshot.py --project /tmp/shotproj            # -> docs/serve/{screenshot,gallery}.png

The project needs trained models (``models/<family>``); the gallery shows a metrics table only in a DVC
project with metrics (a git clone of this repository with the models and ``samples/`` copied in), and
otherwise the note that says why. The same chromium and Playwright as tests/test_serve_browser.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def serving(app):
    """uvicorn on a free loopback port in a thread; yields the base URL."""
    from spritegen.serve.app import in_thread

    return in_thread(app)


def shrink(path: Path) -> None:
    """A screenshot as a 256-colour PNG: the README's images stay small (the page has few colours)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a project folder with models/<family>")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for screenshot.png and gallery.png")
    ap.add_argument("--family", default="ldm")
    ap.add_argument("--prompt", default="a small red and brown fire type Pokémon")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--steps", type=int, default=25, help="ldm sampler steps")
    ap.add_argument("--no-gallery", action="store_true", help="only the generate view")
    args = ap.parse_args()

    from playwright.sync_api import expect, sync_playwright

    from spritegen.repro import reproducible
    from spritegen.serve.app import create_app
    from spritegen.serve.config import ServeConfig

    expect.set_options(timeout=600_000)  # the real ldm on a few CPU cores takes a while
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium on PATH (apt-get install chromium)")
    reproducible(2)  # the same threads as `spritegen sample`: the same pixels
    app = create_app(ServeConfig(device="cpu", preview_every=5), args.project,
                     {"steps": args.steps, "sampler": "dpm++sde", "guidance": 5.0, "temperature": 1.0})
    args.out.mkdir(parents=True, exist_ok=True)
    with serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.set_default_timeout(300_000)
        page.goto(url + "/")
        expect(page.locator(f"#family option[value={args.family}]")).to_be_enabled()
        page.fill("#prompt", args.prompt)
        page.select_option("#family", args.family)
        page.fill("#seed", str(args.seed))
        page.fill("#num_samples", str(args.samples))
        page.click("#submit")
        expect(page.locator("#sprites img")).to_have_count(args.samples)
        page.screenshot(path=str(args.out / "screenshot.png"), full_page=True)
        shrink(args.out / "screenshot.png")

        if not args.no_gallery:
            page.set_viewport_size({"width": 1100, "height": 900})
            page.click("#tab-gallery")
            expect(page.locator("#gallery-status")).not_to_have_text("Reading the experiments (dvc exp show)…")
            page.fill("#live-prompts", "a red fire type Pokémon\na blue water type Pokémon\na green grass type Pokémon")
            page.click("#live-run")
            expect(page.locator("#live-status")).to_contain_text("Done")
            page.screenshot(path=str(args.out / "gallery.png"), full_page=True)
            shrink(args.out / "gallery.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
