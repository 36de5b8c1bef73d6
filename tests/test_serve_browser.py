"""The web page in a real browser (Playwright driving Debian's chromium) against a real uvicorn server.

The project is the session's tiny trained project with the gan family removed, so the page must show an
untrained family as disabled with its training command. Every generation is a 16 px tiny model: the
whole module takes a few seconds once the session fixture has trained them.
"""

from __future__ import annotations

import base64
import shutil

import pytest

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright package (pip install -e '.[test]')")
# Debian's chromium (.ci/run installs it); playwright's own browser download is not used (CI may be offline)
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
PNG = b"\x89PNG\r\n\x1a\n"
PROMPT = "a red fire type pokemon"
MAX_PROMPT = 60
KEY = "test-key-123"


def serving(app):
    """uvicorn on a free loopback port in a thread; yields the base URL."""
    from spritegen.serve.app import in_thread

    return in_thread(app)


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory):
    """The trained project without models/gan: gan is an untrained family."""
    root = tmp_path_factory.mktemp("served") / "project"
    shutil.copytree(trained_project, root, ignore=lambda d, names: ["gan"] if d.endswith("models") else [])
    return root


def make_app(project, api_key=None):
    from spritegen.serve.app import create_app
    from spritegen.serve.config import ServeConfig

    cfg = ServeConfig(device="cpu", preview_every=2, max_prompt_chars=MAX_PROMPT, max_samples=4)
    return create_app(cfg, project, {"steps": 4, "sampler": "ddim", "guidance": 2.0, "temperature": 1.0, "batch_size": 8},
                      api_key=api_key)


@pytest.fixture(scope="module")
def url(project):
    with serving(make_app(project)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    sync_api.expect.set_options(timeout=30_000)  # expect's own 5 s default is short on a loaded 2-core machine
    if CHROMIUM is None:
        pytest.skip("the browser test needs chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # an exception in app.js fails the test
    yield page
    context.close()
    assert not errors, errors


def open_page(page, base):
    page.goto(base + "/")
    # the families come from /health; gan's folder is gone, so it is listed but cannot be chosen
    gan = page.locator("#family option[value=gan]")
    sync_api.expect(gan).to_be_disabled()
    sync_api.expect(gan).to_contain_text("not trained: dvc repro gan")


def test_generate_streams_previews_then_sprites_and_downloads(page, url):
    expect = sync_api.expect
    open_page(page, url)
    page.fill("#prompt", PROMPT)
    page.select_option("#family", "ldm")
    expect(page.locator("#steps")).to_be_visible()
    expect(page.locator("#temperature")).to_be_hidden()  # the latent families' field
    page.fill("#steps", "6")  # previews at steps 2 and 4 (preview_every=2; the last step is the result)
    page.fill("#num_samples", "2")
    page.fill("#seed", "7")
    # previews replace each other within milliseconds: count every preview image the page draws
    page.evaluate("""() => { window.previews = 0;
        new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => { if (n.querySelector && n.querySelector('img')) window.previews++; })))
          .observe(document.querySelector('#preview'), {childList: true}); }""")
    page.click("#submit")

    sprites = page.locator("#sprites figure.sprite img")
    expect(sprites).to_have_count(2)
    assert page.evaluate("window.previews") >= 1
    meta = page.locator("#result-meta")
    expect(meta).to_contain_text("ldm · workspace · model ")
    expect(meta).to_contain_text("ddim, 6 steps, guidance 2")
    expect(meta).to_contain_text("seeds 7–8")
    img = sprites.nth(1)
    assert img.evaluate("i => [i.naturalWidth, getComputedStyle(i).imageRendering]") == [16, "pixelated"]
    assert img.evaluate("i => i.width") >= 64  # scaled up to be seen

    # the second sprite's link downloads seed 8: the same settings, the same pixels
    with page.expect_download() as info:
        page.locator("#sprites a.download").nth(1).click()
    download = info.value
    assert download.suggested_filename == "spritegen-ldm-a-red-fire-type-pokemon-seed8.png"
    data = open(download.path(), "rb").read()
    assert data.startswith(PNG)
    shown = img.get_attribute("src").split(",", 1)[1]
    assert base64.b64decode(shown) == data
    expect(page.locator("#error")).to_be_hidden()


def test_errors_are_shown_in_words(page, url):
    expect = sync_api.expect
    error = page.locator("#error")
    open_page(page, url)
    page.select_option("#family", "cvae")
    expect(page.locator("#steps")).to_be_hidden()

    # the server's 422 (the page does not know temperature's limit): its JSON body's words are shown
    page.fill("#prompt", PROMPT)
    page.fill("#temperature", "50")
    page.click("#submit")
    expect(error).to_be_visible()
    expect(error).to_have_text("temperature must be between 0 and 10, got 50.0")
    expect(page.locator("#temperature")).to_have_attribute("aria-invalid", "true")

    # an over-long prompt: the page says so before asking (the count turns red as it is typed)
    page.fill("#temperature", "1")
    page.fill("#prompt", "x" * (MAX_PROMPT + 5))
    expect(page.locator("#prompt-count")).to_have_text(f"{MAX_PROMPT + 5} / {MAX_PROMPT} characters")
    page.click("#submit")
    expect(error).to_have_text(f"The prompt has {MAX_PROMPT + 5} characters; the limit is {MAX_PROMPT}.")

    # a good request clears the error and shows the sprite (cvae: one preview, then the result)
    page.fill("#prompt", PROMPT)
    page.fill("#num_samples", "1")
    page.click("#submit")
    expect(page.locator("#sprites img")).to_have_count(1)
    expect(error).to_be_hidden()
    expect(page.locator("#result-meta")).to_contain_text("cvae · workspace · model ")


def test_gallery_shows_notes_and_live_columns(page, url):
    expect = sync_api.expect
    open_page(page, url)
    page.click("#tab-gallery")
    expect(page.locator("#view-gallery")).to_be_visible()
    expect(page.locator("#view-generate")).to_be_hidden()
    # not a DVC repository: no rows, and the API's note says why instead of a broken table
    expect(page.locator("#gallery-status")).to_have_text("No metrics to compare yet.")
    expect(page.locator("#notes li").first).to_contain_text("DVC")
    expect(page.locator("#metrics")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()

    page.fill("#live-prompts", "a red fire type pokemon\na blue water type pokemon")
    page.fill("#live-seed", "3")
    page.click("#live-run")
    live = page.locator("#live")
    expect(live.locator("thead th")).to_have_text(["prompt", "ldm", "cvae"])  # the trained families
    expect(live.locator("tbody th")).to_have_text(["a red fire type pokemon", "a blue water type pokemon"])
    expect(live.locator("td img")).to_have_count(4)
    expect(page.locator("#live-status")).to_have_text("Done: seed 3 for every cell.")


def test_api_key_is_sent_as_a_header(browser, project):
    """With a key the page shows a key box; every request (the stream, the download) carries X-API-Key."""
    expect = sync_api.expect
    with serving(make_app(project, api_key=KEY)) as base:
        context = browser.new_context(accept_downloads=True)
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(base + "/")
        expect(page.locator("#api-key")).to_be_visible()
        page.select_option("#family", "cvae")
        page.fill("#prompt", PROMPT)
        page.click("#submit")
        expect(page.locator("#error")).to_contain_text("missing or wrong API key")

        page.fill("#api-key", KEY)
        page.locator("#api-key").dispatch_event("change")
        page.fill("#seed", "5")
        page.fill("#num_samples", "1")
        page.click("#submit")
        expect(page.locator("#sprites img")).to_have_count(1)
        expect(page.locator("#error")).to_be_hidden()
        with page.expect_download() as info:  # through fetch + blob: a plain link cannot send the header
            page.click("#sprites a.download")
        assert info.value.suggested_filename == "spritegen-cvae-a-red-fire-type-pokemon-seed5.png"
        assert open(info.value.path(), "rb").read().startswith(PNG)
        context.close()


def test_gallery_renders_a_metrics_table(page, url):
    """A DVC project's table (stubbed: the tmp project is not one): value ±half-width, marks, params, grids."""
    expect = sync_api.expect
    runs = [{"name": "main", "label": "main (abc1234)", "rev": "abc1234def", "kind": "baseline", "families": ["cvae"],
             "grids": {"cvae": "/api/v1/experiments/main/grid/cvae.png"}},
            {"name": "lr2", "label": "lr2", "rev": "fed4321abc", "kind": "experiment", "families": ["cvae"],
             "grids": {"cvae": "/api/v1/experiments/lr2/grid/cvae.png"}}]
    table = {"reference": "main (abc1234)", "runs": runs, "params": [{"key": "cvae.lr", "values": ["0.001", "0.002"]}],
             "notes": ["compared with main"],
             "rows": [{"family": "cvae", "metric": "fd", "direction": "lower",
                       "cells": [{"value": 0.5, "ci95": [0.4, 0.6], "mark": ""}, {"value": 0.25, "ci95": [0.2, 0.3], "mark": "better"}]},
                      {"family": "cvae", "metric": "clip_score", "direction": "higher",
                       "cells": [{"value": 0.7, "ci95": None, "mark": ""}, None]}]}
    page.route("**/api/v1/experiments", lambda route: route.fulfill(json=table))
    open_page(page, url)
    expect(page.locator("#experiment option")).to_have_text(["workspace", "main (abc1234)", "lr2"])
    page.click("#tab-gallery")
    metrics = page.locator("#metrics")
    expect(metrics.locator("thead th")).to_have_text(["family", "metric", "main (abc1234) (ref)", "lr2"])
    expect(metrics.locator("tbody tr").nth(0).locator("td")).to_have_text(["fd ↓", "0.5 ±0.1", "0.25 ±0.05 ▲"])
    expect(metrics.locator("tbody tr").nth(1).locator("td")).to_have_text(["clip_score ↑", "0.7", "—"])
    expect(metrics.locator("td.better")).to_have_count(1)
    expect(page.locator("#params tbody td")).to_have_text(["cvae.lr", "0.001", "0.002"])
    expect(page.locator("#notes li")).to_have_text(["compared with main"])
    # neither run is real here: the grid endpoint answers 404 and the page says so in place of the image
    expect(page.locator("#grids .run h3")).to_have_text(["main (abc1234) · abc1234", "lr2 · fed4321"])
    expect(page.locator("#grids p")).to_have_text(["no grid here"] * 2)
    expect(page.locator("#live-experiments input")).to_have_count(3)
