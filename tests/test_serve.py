"""The generation API (spritegen/serve): each endpoint, each limit, the stream, determinism, concurrency,
overload, names that try to leave the model folders, and the command line. Served from a project with
every family trained on the tiny preset (conftest.trained_project)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from spritegen.serve.app import create_app, in_thread as live  # noqa: E402
from spritegen.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow

TINY = {"sampler": "ddim", "steps": 4, "guidance": 3.0, "temperature": 1.0, "batch_size": 8}
PROMPT = "a red fire type pokemon"


def make_app(project: Path, api_key: str | None = None, **serve):
    return create_app(ServeConfig(device="cpu", experiments_ttl_s=3600, **serve), project, TINY, api_key=api_key)


@pytest.fixture(scope="module")
def client(trained_project):
    with TestClient(make_app(trained_project, preview_every=2)) as c:
        yield c


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def events(lines) -> list[tuple[str, dict]]:
    out, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            out.append((kind, json.loads(line[len("data: "):])))
    return out


# --- health and generate -----------------------------------------------------------------------------


def test_health_lists_each_family_with_its_checkpoint_hash(client, trained_project):
    h = client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["device"] == "cpu" and h["uptime_s"] >= 0
    for family in ("ldm", "cvae", "gan"):
        entry = h["families"][family]
        weights = trained_project / "models" / family / ("finetune/model.safetensors" if family == "ldm" else "model.safetensors")
        assert entry["trained"] and entry["checkpoint"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert h["limits"]["max_samples"] == 8 and not h["api_key_required"]


@pytest.mark.parametrize("family", ["ldm", "cvae", "gan"])
def test_generate_answers_pngs_the_version_and_the_resolved_settings(client, family):
    r = client.post("/api/v1/generate", json={"prompt": PROMPT, "family": family, "num_samples": 3, "seed": 7})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["family"] == family and out["experiment"] == "workspace" and len(out["version"]) == 16
    assert [decode(b).size for b in out["images"]] == [(16, 16)] * 3
    assert out["settings"]["seeds"] == [7, 8, 9] and out["generation_ms"] > 0
    if family == "ldm":
        assert out["settings"] | {"steps": 4, "sampler": "ddim", "guidance": 3.0} == out["settings"]
    else:
        assert out["settings"]["temperature"] == 1.0 and "steps" not in out["settings"]
    again = client.post("/api/v1/generate", json={"prompt": PROMPT, "family": family, "num_samples": 3, "seed": 7}).json()
    assert again["images"] == out["images"]  # the same request, the same bytes
    other = client.post("/api/v1/generate", json={"prompt": PROMPT, "family": family, "num_samples": 1, "seed": 8}).json()
    assert other["images"][0] == out["images"][1]  # sprite k is seed + k's, whatever the batch


def test_the_api_gives_the_pixels_spritegen_sample_gives(client, trained_project):
    from spritegen.generators import load_generator

    gen = load_generator("gan", trained_project / "models/gan", device="cpu", temperature=1.0, batch_size=8)
    expected = gen.generate([PROMPT] * 2, [3, 4])
    out = client.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan", "num_samples": 2, "seed": 3}).json()
    import numpy as np

    for b64, image in zip(out["images"], expected):
        assert np.array_equal(np.asarray(decode(b64)), image.permute(1, 2, 0).numpy())


def test_download_is_a_named_png_of_that_seed(client):
    r = client.get("/api/v1/download", params={"prompt": "A Blue/Water pokemon!", "seed": 5, "family": "cvae"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'attachment; filename="spritegen-cvae-a-blue-water-pokemon-seed5.png"'
    same = client.post("/api/v1/generate", json={"prompt": "A Blue/Water pokemon!", "family": "cvae", "seed": 5}).json()
    assert base64.b64decode(same["images"][0]) == r.content


# --- limits: a 422 that names the field, before any compute ----------------------------------------


@pytest.mark.parametrize("body, field, words", [
    ({"prompt": "x" * 301, "family": "gan"}, "prompt", "limit is 300"),
    ({"prompt": "   ", "family": "gan"}, "prompt", "empty"),
    ({"prompt": PROMPT, "family": "gan", "num_samples": 0}, "num_samples", "between 1 and 8"),
    ({"prompt": PROMPT, "family": "gan", "num_samples": 9}, "num_samples", "between 1 and 8"),
    ({"prompt": PROMPT, "family": "gan", "num_samples": "3"}, "num_samples", "integer"),
    ({"prompt": PROMPT, "family": "gan", "seed": -1}, "seed", "between 0"),
    ({"prompt": PROMPT, "family": "ldm", "steps": 101}, "steps", "between 1 and 100"),
    ({"prompt": PROMPT, "family": "ldm", "guidance": 21}, "guidance", "between 0 and 20"),
    ({"prompt": PROMPT, "family": "ldm", "guidance": -0.5}, "guidance", "between 0 and 20"),
    ({"prompt": PROMPT, "family": "ldm", "guidance": 10**400}, "guidance", "between 0 and 20"),  # float() overflows
    ({"prompt": PROMPT, "family": "cvae", "temperature": 10**400}, "temperature", "between 0 and 10"),
    ({"prompt": PROMPT, "family": "ldm", "sampler": "euler"}, "sampler", "unknown sampler"),
    ({"prompt": PROMPT, "family": "gan", "steps": 10}, "steps", "does not apply to the gan family"),
    ({"prompt": PROMPT, "family": "ldm", "temperature": 0.5}, "temperature", "does not apply to the ldm family"),
    ({"prompt": PROMPT, "family": "diffusion"}, "family", "unknown family"),
    ({"prompt": PROMPT, "family": "gan", "experiment": "nope"}, "experiment", "unknown experiment"),
    ({"prompt": PROMPT, "family": "gan", "colour": "red"}, "colour", "unknown field"),
    ({"family": "gan"}, "prompt", "required"),
    ({"prompt": 3, "family": "gan"}, "prompt", "string"),
])
def test_each_limit_is_a_422_naming_the_field(client, body, field, words):
    r = client.post("/api/v1/generate", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and words in r.json()["error"], r.json()


@pytest.mark.parametrize("content", [
    b"{bad json", b"", b"[1, 2]", b"null", b"\xff\xfe",
    b"[" * 5000 + b"]" * 5000,  # json.loads: RecursionError, not a JSONDecodeError (found by the fuzz)
    b'{"prompt": "a red pokemon", "family": "gan", "seed": ' + b"1" * 5000 + b"}",  # over int's 4,300 digits
    b'{"prompt": "a red \\ud800 pokemon", "family": "gan"}',  # a lone surrogate: the tokenizer cannot read it
    b'{"prompt": "a red pokemon", "family": "gan", "\\ud800": 1}',  # ... nor UTF-8 encode it in the answer
])
def test_malformed_bodies_are_422_in_words(client, content):
    r = client.post("/api/v1/generate", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"], r.text


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    r = client.post("/api/v1/generate", content=b"{" + b" " * 20000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "16384 bytes" in r.json()["error"]


def test_query_parameters_are_checked_by_name(client):
    r = client.get("/api/v1/download", params={"prompt": PROMPT, "family": "gan", "seed": "two"})
    assert r.status_code == 422 and r.json()["field"] == "seed"
    r = client.get("/api/v1/download", params={"prompt": PROMPT, "family": "gan", "num_samples": 3})
    assert r.status_code == 422 and r.json()["field"] == "num_samples"  # a download is one sprite
    r = client.get("/api/v1/generate/stream", params={"prompt": PROMPT, "family": "ldm", "guidance": "nan"})
    assert r.status_code == 422 and r.json()["field"] == "guidance"
    assert client.get("/api/v1/nothing").status_code == 404


def test_an_api_key_guards_everything_but_health(trained_project):
    with TestClient(make_app(trained_project, api_key="s3cret")) as c:
        body = {"prompt": PROMPT, "family": "gan"}
        assert c.post("/api/v1/generate", json=body).status_code == 401
        assert c.post("/api/v1/generate", json=body, headers={"X-API-Key": "wrong"}).json()["field"] == "X-API-Key"
        assert c.post("/api/v1/generate", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/api/v1/health").json()["api_key_required"]


# --- untrained families, broken checkpoints, names that leave the model folders ---------------------


@pytest.fixture
def project_copy(trained_project, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(trained_project / "models", root / "models", symlinks=True)
    return root


def test_an_untrained_family_is_listed_and_answers_503_with_its_command(project_copy):
    shutil.rmtree(project_copy / "models/gan")
    with TestClient(make_app(project_copy)) as c:
        assert c.get("/api/v1/health").json()["families"]["gan"] == {
            "trained": False, "loaded": False, "checkpoint": None, "train_command": "dvc repro gan", "experiments_loaded": []}
        r = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan"})
        assert r.status_code == 503 and "dvc repro gan" in r.json()["error"] and r.headers["retry-after"]
        assert c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "cvae"}).status_code == 200


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_run(project_copy, tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (project_copy / "models/cvae/model.safetensors").write_bytes(pickle.dumps(Evil()))
    with TestClient(make_app(project_copy)) as c:
        r = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "cvae"})
    assert r.status_code == 503 and "model.safetensors" in r.json()["error"] and "dvc repro cvae" in r.json()["error"]
    assert not marker.exists()


def test_a_model_folder_linked_outside_the_project_is_refused(project_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(project_copy / "models/gan", outside)
    (project_copy / "models/gan").symlink_to(outside, target_is_directory=True)
    with TestClient(make_app(project_copy)) as c:
        r = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan"})
        assert r.status_code == 422 and "outside" in r.json()["error"]


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "..", "models/gan", "workspace/../../x"])
def test_experiment_names_are_looked_up_never_joined(client, name):
    r = client.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan", "experiment": name})
    assert r.status_code == 422 and r.json()["field"] == "experiment"
    assert client.get(f"/api/v1/experiments/{name.replace('/', '%2F')}/grid/gan.png").status_code in (404, 422)


def test_experiments_outside_a_dvc_project_list_the_workspace_and_say_why(client):
    out = client.get("/api/v1/experiments").json()
    assert [r["name"] for r in out["runs"]] == ["workspace"] and out["rows"] == [] and "DVC" in " ".join(out["notes"])
    r = client.get("/api/v1/experiments/workspace/grid/gan.png")  # no sample stage ran in this project
    assert r.status_code == 404 and "dvc repro sample@gan" in r.json()["error"]


# --- the stream ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, previews", [("ldm", [2]), ("cvae", [1]), ("gan", [1])])
def test_the_stream_sends_start_previews_result_end(client, family, previews):
    params = {"prompt": PROMPT, "family": family, "num_samples": 2, "seed": 1}
    with client.stream("GET", "/api/v1/generate/stream", params=params) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r.iter_lines())
    kinds = [k for k, _ in got]
    assert kinds == ["start"] + ["preview"] * len(previews) + ["result", "end"]
    assert [d["step"] for k, d in got if k == "preview"] == previews and all(len(d["images"]) == 2 for k, d in got if k == "preview")
    solo = client.post("/api/v1/generate", json=params).json()
    assert got[-2][1]["images"] == solo["images"]  # previews change nothing in the result


def test_a_client_that_disconnects_stops_the_work(trained_project):
    app = make_app(trained_project, preview_every=1, max_steps=1000)
    with live(app) as url:
        params = {"prompt": PROMPT, "family": "ldm", "steps": 1000, "sampler": "ddim"}
        with httpx.stream("GET", url + "/api/v1/generate/stream", params=params, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: preview"):
                    break  # one preview seen: hang up
        for _ in range(300):
            h = httpx.get(url + "/api/v1/health").json()
            if h["cancelled"] and not h["running"]:
                break
            time.sleep(0.05)
        assert h["cancelled"] == 1 and h["running"] == 0 and h["generated"] == 0, h


# --- concurrency and overload -------------------------------------------------------------------------


def test_concurrent_requests_each_equal_their_solo_run(trained_project):
    bodies = [{"prompt": PROMPT, "family": "ldm", "num_samples": 2, "seed": 0, "steps": 6},
              {"prompt": "a blue water type pokemon", "family": "ldm", "num_samples": 2, "seed": 5, "steps": 3,
               "guidance": 1.0, "sampler": "ddpm"},
              {"prompt": "a green grass type pokemon", "family": "gan", "num_samples": 4, "seed": 2, "temperature": 0.5}]
    with live(make_app(trained_project, max_concurrency=3)) as url:
        solo = [httpx.post(url + "/api/v1/generate", json=b, timeout=60).json() for b in bodies]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda b: httpx.post(url + "/api/v1/generate", json=b, timeout=60).json(), bodies * 2))
    for i, out in enumerate(together):
        assert out["images"] == solo[i % 3]["images"] and out["settings"] == solo[i % 3]["settings"]


def test_overload_is_429_or_503_with_retry_after_never_a_hang(trained_project):
    slow = {"prompt": PROMPT, "family": "ldm", "steps": 400}
    quick = {"prompt": PROMPT, "family": "gan"}
    with live(make_app(trained_project, max_concurrency=1, max_queue=1, queue_timeout_s=0.3, max_steps=1000)) as url:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(httpx.post, url + "/api/v1/generate", json=slow, timeout=120)
            for _ in range(200):  # until the slow one holds the slot
                if httpx.get(url + "/api/v1/health").json()["running"]:
                    break
                time.sleep(0.01)
            waiting = pool.submit(httpx.post, url + "/api/v1/generate", json=quick, timeout=30)
            time.sleep(0.1)
            t0 = time.perf_counter()
            refused = httpx.post(url + "/api/v1/generate", json=quick, timeout=30)
            assert refused.status_code == 429 and refused.headers["retry-after"] and time.perf_counter() - t0 < 1
            timed_out = waiting.result()
            assert timed_out.status_code == 503 and timed_out.headers["retry-after"] and "retry" in timed_out.json()["error"]
            assert running.result().status_code == 200
        assert httpx.post(url + "/api/v1/generate", json=quick, timeout=30).status_code == 200  # the slot freed


def test_each_model_loads_once(trained_project, monkeypatch):
    import spritegen.serve.models as models

    calls = []
    real = models.load_generator
    monkeypatch.setattr(models, "load_generator", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    with live(make_app(trained_project, max_concurrency=4)) as url:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda s: httpx.post(url + "/api/v1/generate", json={"prompt": PROMPT, "family": "cvae", "seed": s},
                                                       timeout=60).status_code, range(8)))
    assert codes == [200] * 8 and calls == ["cvae"]


# --- DVC experiments -----------------------------------------------------------------------------------


def test_an_experiments_checkpoint_is_served_from_the_dvc_cache(trained_project, tmp_path):
    """A real git + DVC project: the gan tracked by DVC, an experiment saved with other weights; the API
    serves each run's own weights and lists the experiment."""
    root = tmp_path / "repo"
    shutil.copytree(trained_project / "models", root / "models", ignore=shutil.ignore_patterns("cvae"))

    def run(*cmd):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)

    dvc = [sys.executable, "-m", "dvc"]
    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(*dvc, "init", "-q")
    run(*dvc, "add", "models/gan")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "base")
    # another gan: scaled weights stand in for another training run (the API only needs other bytes)
    from safetensors.torch import load_file, save_file

    path = root / "models/gan/model.safetensors"
    state = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(state, str(path))
    exp_version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    run(*dvc, "add", "models/gan")
    run(*dvc, "exp", "save", "-n", "bigger")
    run("git", "checkout", "--", ".")
    run(*dvc, "checkout", "-q")
    with TestClient(make_app(root)) as c:
        names = [r["name"] for r in c.get("/api/v1/experiments").json()["runs"]]
        assert "bigger" in names and "workspace" in names
        base = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan"}).json()
        exp = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "gan", "experiment": "bigger"}).json()
        assert exp["experiment"] == "bigger" and exp["version"] == exp_version != base["version"]
        assert exp["images"] != base["images"]
        assert c.get("/api/v1/health").json()["families"]["gan"]["experiments_loaded"] == ["bigger"]
        r = c.post("/api/v1/generate", json={"prompt": PROMPT, "family": "cvae", "experiment": "bigger"})
        assert r.status_code == 503 and "bigger" in r.json()["error"]  # no run of this project has a cvae


# --- the command line ----------------------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_allow_remote(trained_project, monkeypatch, capsys):
    import uvicorn

    from spritegen.cli import main as cli

    monkeypatch.chdir(trained_project)
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.append((host, port)))
    assert cli(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "--allow-remote" in capsys.readouterr().err and not served
    assert cli(["serve", "--host", "0.0.0.0", "--port", "8123", "--allow-remote", "--family", "gan"]) == 0
    err = capsys.readouterr().err
    assert served == [("0.0.0.0", 8123)] and "warning" in err and "without an API key" in err and "gan: checkpoint" in err
    assert cli(["serve", "--family", "vae"]) == 2
