"""Latency, throughput and robustness of the generation API, measured against a real ``spritegen serve``.

    python benchmarks/bench_serve.py --project . --out benchmarks/results/serve_cpu.json
    python benchmarks/bench_serve.py --project /tmp/proj --families gan cvae --requests 10 --skip-fuzz

It starts ``python -m spritegen serve --port <free port>`` as a subprocess in ``--project`` (the folder
holding params.yaml and models/<family>), waits for ``/api/v1/health`` and then, for each trained family
(or ``--families``):

* latency: after one warm-up request (which loads the model; its time is printed on its own), ``--requests``
  POSTs of one sprite and ``--requests`` of a batch of 8 (``num_samples=8``), a new seed each, one at a
  time; p50 and p95 of the client's wall time (request sent -> body read) and of the server's own
  ``generation_ms`` (the generator call alone: no queueing, no PNG/base64, no HTTP);
* throughput: ``--clients`` (8) threads, each with its own connection, share ``--throughput-requests``
  one-sprite POSTs; a 429 or 503 is counted and the request retried after its ``Retry-After`` (so every
  request ends served or the run says which were not); sprites/s and requests/s over the wall time;
* a bounded fuzz (``fuzz()``, importable; tests/test_serve_fuzz.py runs it): ``--fuzz-requests`` (500)
  malformed or hostile requests drawn from a seeded mix, sent over raw sockets so that nothing on the
  client side normalises them, to every endpoint. Responses are counted by status class; a 5xx other
  than a deliberate 503 with ``Retry-After`` (overload, untrained family), an SSE ``error`` event with a
  5xx status inside a 200 stream, or a request without any response is a server error, printed with the
  request and the traceback the server logged. Afterwards the server must still answer
  ``/api/v1/health`` with no slot left taken, and generate one sprite per family.

The table goes to stdout; ``--out`` gets the same figures (and every raw timing) as JSON. ``--device``
overrides ``serve.device`` through a copy of the project's params.yaml (the project is not modified).
The figures depend on the machine's load: the server's torch threads (``serve.threads``) and the client
share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode, urlsplit

import httpx
import numpy as np

PROMPTS = ("a red fire type pokemon", "a small blue water type pokemon", "a green grass and poison type pokemon",
           "a huge yellow electric type pokemon", "a purple ghost type pokemon", "a white ice type pokemon",
           "a pink fairy type pokemon", "a brown ground type pokemon")
FAMILIES = ("ldm", "cvae", "gan")


# --------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    log_path: Path
    proc: subprocess.Popen
    health: dict[str, Any]

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size


def params_with_device(project: Path, device: str, folder: Path) -> Path:
    """A copy of the project's params.yaml with ``serve.device`` set (the project's own file is untouched)."""
    import yaml

    src = project / "params.yaml"
    data = yaml.safe_load(src.read_text()) if src.is_file() else {}
    data = data or {}
    data.setdefault("serve", {})["device"] = device
    out = folder / "params.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@contextlib.contextmanager
def running_server(project: Path | str = ".", families: list[str] | None = None, device: str | None = None,
                   log_path: Path | str | None = None, startup_timeout: float = 300.0,
                   extra_args: list[str] | None = None) -> Iterator[ServerProcess]:
    """``python -m spritegen serve --port <free>`` in ``project`` until the block ends; its stdout and
    stderr (uvicorn's log, with any traceback) go to ``log_path`` (a temporary file by default)."""
    project = Path(project).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    log_path = Path(log_path) if log_path else tmp / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "spritegen", "serve", "--port", str(port), "--log-level", "warning"]
    if families:
        cmd += ["--family", *families]
    if device:
        cmd += ["--params", str(params_with_device(project, device, tmp))]
    cmd += extra_args or []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPRITEGEN_API_KEY", None)  # the benchmark measures the open API
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, health = time.monotonic() + startup_timeout, None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"spritegen serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                r = httpx.get(url + "/api/v1/health", timeout=5)
                if r.status_code == 200:
                    health = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        if health is None:
            raise RuntimeError(f"spritegen serve did not answer /api/v1/health within {startup_timeout:g} s:\n"
                               f"{log_path.read_text()[-3000:]}")
        yield ServerProcess(url, log_path, proc, health)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------ latency, throughput


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def body_for(family: str, prompt: str, seed: int, num_samples: int) -> dict[str, Any]:
    return {"prompt": prompt, "family": family, "seed": seed, "num_samples": num_samples}


def latency(url: str, family: str, n: int, batch: int, seed0: int) -> dict[str, Any]:
    """``n`` sequential POSTs of ``batch`` sprites (seeds seed0, seed0 + batch, ...); the server is warm."""
    client_ms, server_ms, failed = [], [], []
    with httpx.Client(base_url=url, timeout=600) as c:
        for i in range(n):
            body = body_for(family, PROMPTS[i % len(PROMPTS)], seed0 + i * batch, batch)
            t = time.perf_counter()
            r = c.post("/api/v1/generate", json=body)
            ms = 1000 * (time.perf_counter() - t)
            if r.status_code != 200:
                failed.append({"status": r.status_code, "body": r.text[:300]})
                continue
            out = r.json()
            assert len(out["images"]) == batch, f"{family}: asked {batch} sprites, got {len(out['images'])}"
            client_ms.append(ms)
            server_ms.append(out["generation_ms"])
    return {"family": family, "batch": batch, "n": len(client_ms), "failed": failed,
            "client_p50_ms": pct(client_ms, 50), "client_p95_ms": pct(client_ms, 95),
            "server_p50_ms": pct(server_ms, 50), "server_p95_ms": pct(server_ms, 95),
            "client_ms": [round(x, 1) for x in client_ms], "server_ms": server_ms}


def warm_up(url: str, family: str) -> float:
    """One request (loads the model on first use); its wall milliseconds."""
    t = time.perf_counter()
    r = httpx.post(url + "/api/v1/generate", json=body_for(family, PROMPTS[0], 0, 1), timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"{family}: warm-up request answered {r.status_code}: {r.text[:500]}")
    return 1000 * (time.perf_counter() - t)


def throughput(url: str, family: str, clients: int, total: int, num_samples: int = 1, seed0: int = 1_000_000,
               max_tries: int = 20) -> dict[str, Any]:
    """``clients`` threads share ``total`` requests of ``num_samples`` sprites; a 429/503 is counted and the
    request retried after Retry-After (at most ``max_tries`` times)."""
    lock = threading.Lock()
    todo = list(range(total))
    stats: dict[str, Any] = {"ok": 0, "429": 0, "503": 0, "other": [], "gave_up": 0, "retry_after_missing": 0,
                             "ms": [], "server_ms": []}

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                body = body_for(family, PROMPTS[i % len(PROMPTS)], seed0 + i * num_samples, num_samples)
                for _ in range(max_tries):
                    t = time.perf_counter()
                    try:
                        r = c.post("/api/v1/generate", json=body)
                    except httpx.TransportError as e:
                        with lock:
                            stats["other"].append(f"{type(e).__name__}: {e}")
                        break
                    ms = 1000 * (time.perf_counter() - t)
                    if r.status_code == 200:
                        with lock:
                            stats["ok"] += 1
                            stats["ms"].append(ms)
                            stats["server_ms"].append(r.json()["generation_ms"])
                        break
                    if r.status_code in (429, 503):
                        wait = r.headers.get("retry-after")
                        with lock:
                            stats[str(r.status_code)] += 1
                            stats["retry_after_missing"] += wait is None
                        time.sleep(float(wait) if wait and wait.isdigit() else 1.0)
                        continue
                    with lock:
                        stats["other"].append(f"{r.status_code}: {r.text[:200]}")
                    break
                else:
                    with lock:
                        stats["gave_up"] += 1

    threads = [threading.Thread(target=worker, name=f"client{k}") for k in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms, server_ms = stats.pop("ms"), stats.pop("server_ms")
    return {"family": family, "clients": clients, "requests": total, "num_samples": num_samples, "wall_s": wall,
            **stats, "requests_per_s": stats["ok"] / wall, "sprites_per_s": stats["ok"] * num_samples / wall,
            "client_p50_ms": pct(ms, 50), "client_p95_ms": pct(ms, 95),
            "server_p50_ms": pct(server_ms, 50), "server_p95_ms": pct(server_ms, 95)}


# ------------------------------------------------------------------------------------------------ the fuzz


@dataclass
class Case:
    """One request, as bytes on the wire (so nothing normalises it), and what it is meant to test."""

    kind: str
    method: str
    target: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw: bytes | None = None  # a whole request as given (malformed HTTP); else built from the fields
    early_close: bool = False  # a stream read up to its first bytes, then the client goes away
    content_length: bool = True
    timeout: float | None = None  # this case's own (a malformed request may leave the connection open)

    def wire(self, host: str) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        names = {k.lower() for k, _ in self.headers}
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.content_length and "content-length" not in names and "transfer-encoding" not in names \
                and (self.body or self.method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(self.body)}")
        return b"".join(encode_line(line) + b"\r\n" for line in lines) + b"\r\n" + self.body

    def describe(self, limit: int = 300) -> str:
        if self.raw is not None:
            return f"[{self.kind}] raw {self.raw[:limit]!r}"
        head = f"[{self.kind}] {self.method} {self.target[:limit]}"
        if self.headers:
            head += f" headers={[(k, v[:60]) for k, v in self.headers]}"
        if self.body:
            head += f" body({len(self.body)} B)={self.body[:limit]!r}"
        return head


def encode_line(line: str) -> bytes:
    """A request or header line as bytes: latin-1 where it fits (header bytes as given), else raw UTF-8."""
    try:
        return line.encode("latin-1")
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogatepass")


HOSTILE_NAMES = [
    "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd", "/proc/self/environ", "C:\\Windows\\win.ini", "..\\..\\windows\\system32", "gan/../../..",
    "models/gan", "ldm/finetune", "gan\x00", "gan\x00.png", "GAN", " gan", "gan ", "\u202egan", "ｇａｎ", "g\u0430n",
    "$(id)", "`id`", "gan; rm -rf /", "*", "?", ".", "..", "", "   ", "workspace/../..", "workspace\x00",
    "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "~", "~root/.ssh/id_rsa", "gan" * 100,
    "x" * 5000, "{family}", "%s%s%s%n", "\\x00", "con", "nul", "NUL.txt", "🔥", "\ud800",
]
HOSTILE_PROMPTS = [
    "", " ", "\t\n\r", "\x00", "a\x00b", "\x00" * 50, "\x1b[31mred\x1b[0m", "a\x07\x08\x0b\x0c", "🔥🐉⚡" * 20,
    "👨‍👩‍👧‍👦 family", "\u202eevil\u202c", "\u200b\u200c\u200d\ufeff", "Z̸̧̨̛̛a̴̡l̵g̷o̶", "ａ ｒｅｄ ｆｉｒｅ",
    "中文 火 精灵", "مرحبا", "\ud800 lone", "\udfff", "\uffff\ufffe", "a" * 300, "a" * 301, "é" * 300, "🔥" * 300,
    "<script>alert(1)</script>", "'; DROP TABLE sprites; --", "{{7*7}}", "${jndi:ldap://x}", "../../etc/passwd",
    "%00%0a%0d", "\\u0000", "a red fire type pokemon\r\nX-Injected: 1", "null", "[object Object]",
]
WEIRD_NUMBERS = ["-1", "-0", "-0.0", "0", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e308", "4.9e-324",
                 "1" * 30, "-" + "9" * 30, "1" * 400, "9" * 5000, "0x10", "1_000", "01", "1.5", "true", "null",
                 "\"5\"", "[]", "{}", "[1]"]
QUERY_VALUES = ["", "nan", "inf", "-inf", "NaN", "1e3", "0x10", " 12", "12 ", "+3", "-1", "1.0", "１２", "١٢",
                "9" * 5000, "%ZZ", "%00", "%ED%A0%80", "%FF%FE", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "/etc/passwd",
                "a" * 9000, "🔥", "%F0%9F%94%A5", "true", "[]", "gan", "ldm", "cvae", "ddim", "unknown"]
QUERY_KEYS = ["prompt", "family", "seed", "num_samples", "steps", "guidance", "sampler", "temperature", "experiment"]
ROUTES = ["/api/v1/generate", "/api/v1/generate/stream", "/api/v1/download", "/api/v1/health", "/api/v1/experiments",
          "/api/v1/experiments/workspace/grid/gan.png", "/", "/static/index.html", "/api/docs", "/api/openapi.json"]
UNKNOWN_ROUTES = [
    "/api/v2/generate", "/api/v1/generate/", "/api/v1//generate", "/api/v1/generate/../health", "/admin", "/.env",
    "/.git/config", "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fetc%2fpasswd",
    "//etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/api/v1/experiments/..%2F..%2Fetc%2Fpasswd/grid/gan.png",
    "/api/v1/experiments/%2e%2e/grid/gan.png", "/api/v1/experiments/workspace/grid/..%2F..%2Fparams.yaml",
    "/api/v1/experiments/workspace/grid/%2Fetc%2Fpasswd.png", "/api/v1/experiments/workspace/grid/gan%00.png",
    "/api/v1/experiments/%00/grid/gan.png", "/api/v1/health%00", "/api/v1/" + "a" * 4000, "/static/", "/static",
    "/favicon.ico", "/api/v1/experiments/workspace/grid/ldm.png", "/api/v1/experiments/../../grid/gan.png",
    "*", "/api/v1/health?x=" + "%" * 50, "/%", "/api/v1/generate%2Fstream",
]


class CaseMaker:
    """Seeded generators of hostile requests: each method returns one Case."""

    def __init__(self, rng: random.Random, families: list[str]):
        self.rng, self.families = rng, families

    def family(self) -> str:
        return self.rng.choice(self.families)

    def valid_body(self) -> dict[str, Any]:
        """A request that would be served (kept cheap: one sprite, and few steps for the ldm)."""
        body: dict[str, Any] = {"prompt": self.rng.choice(PROMPTS), "family": self.family(), "seed": self.rng.randrange(1000)}
        if body["family"] == "ldm":
            body["steps"] = self.rng.randint(1, 4)
        return body

    def post(self, kind: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Case:
        return Case(kind, "POST", "/api/v1/generate", body,
                    headers if headers is not None else [("Content-Type", "application/json")])

    def dumps(self, obj: Any) -> bytes:
        # sometimes ASCII escapes, sometimes raw UTF-8 (lone surrogates then become invalid UTF-8 bytes)
        if self.rng.random() < 0.5:
            return json.dumps(obj).encode()
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")

    # ---- POST /api/v1/generate bodies
    def bad_json(self) -> Case:
        r = self.rng
        body = r.choice([b"{", b"}", b"{prompt: 'x', family: 'gan'}", b"{'prompt': 'x'}", b"[1, 2", b"nul", b"tru",
                         b'{"prompt": "x", "family": "gan",}', b'{"prompt": "x" "family": "gan"}', b"\xff\xfe{}",
                         b"\x00\x00\x00{", bytes(r.randrange(256) for _ in range(r.randint(1, 300))),
                         b'{"prompt": "\\x41", "family": "gan"}', b'{"prompt": "\\ud83d\\ude", "family": "gan"}',
                         "{\"prompt\": \"caf\u00e9\", \"family\": \"gan\"}".encode("latin-1"),
                         b'\xef\xbb\xbf{"prompt": "x", "family": "gan"}', b"<xml/>", b"prompt=x&family=gan"])
        return self.post("bad_json", body)

    def truncated_json(self) -> Case:
        full = self.dumps(self.valid_body())
        return self.post("truncated_json", full[:self.rng.randrange(1, len(full))])

    def not_an_object(self) -> Case:
        body = self.rng.choice([b"", b" ", b"\n", b"null", b"[]", b"[{}]", b'"prompt"', b"123", b"-1", b"true",
                                b"NaN", b"{}", b'{"": ""}', b"[" * 20 + b"]" * 20])
        return self.post("not_an_object", body)

    def deep_nesting(self) -> Case:
        depth = self.rng.choice([100, 1000, 3000, 8000])
        if self.rng.random() < 0.5:
            inner = b"[" * depth + b"]" * depth
        else:
            inner = b'{"a":' * depth + b"1" + b"}" * depth
        return self.post("deep_nesting", b'{"prompt": "x", "family": "gan", "seed": ' + inner + b"}"
                         if self.rng.random() < 0.5 else inner)

    def wrong_types(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(QUERY_KEYS)
        body[key] = self.rng.choice([None, True, False, "5", "", [], {}, [1, 2], {"$gt": ""}, 1.5, 3, -2,
                                     ["gan"], {"family": "gan"}, "1e3"])
        return self.post("wrong_types", self.dumps(body))

    def weird_numbers(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(["seed", "num_samples", "steps", "guidance", "temperature"])
        if key in ("steps", "guidance") and body["family"] != "ldm":
            body["family"] = "ldm" if "ldm" in self.families else body["family"]
        if key == "temperature" and body["family"] == "ldm":
            body["family"] = self.rng.choice([f for f in self.families if f != "ldm"] or ["gan"])
            body.pop("steps", None)
        text = self.dumps(body)[:-1] + f', "{key}": {self.rng.choice(WEIRD_NUMBERS)}}}'.encode()
        return self.post("weird_numbers", text)

    def huge_values(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(["seed", "num_samples", "steps", "guidance", "temperature"])
        body[key] = self.rng.choice([2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30, 10**300, 10**400, 1e308, -1e308, 2**31 - 1])
        return self.post("huge_values", self.dumps(body))

    def hostile_names(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(["family", "experiment", "sampler", "experiment"])
        body[key] = self.rng.choice(HOSTILE_NAMES)
        return self.post("hostile_names", self.dumps(body))

    def hostile_prompts(self) -> Case:
        body = self.valid_body()
        body["prompt"] = self.rng.choice(HOSTILE_PROMPTS)
        return self.post("hostile_prompts", self.dumps(body))

    def unknown_fields(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(["__proto__", "constructor", "prompt ", "Prompt", "model", "../x", "a\x00b", "", "🔥",
                               "num_samples\u200b", "api_key", "callback_url", "x" * 1000])
        body[key] = self.rng.choice([1, "x", None, {"__proto__": {"admin": True}}])
        text = self.dumps(body)
        if self.rng.random() < 0.3:  # a duplicated key: the last one wins in json.loads
            text = text[:-1] + b', "family": ' + self.dumps(self.rng.choice(HOSTILE_NAMES)) + b"}"
        return self.post("unknown_fields", text)

    def huge_body(self) -> Case:
        r = self.rng
        size = r.choice([16385, 20000, 100_000, 1_000_000])
        prompt = "a" * size
        body = self.dumps({"prompt": prompt, "family": self.family()})
        how = r.choice(["declared", "chunked", "lying_small", "lying_huge"])
        if how == "chunked":
            chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)]
            wire = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
            return self.post("huge_body", wire, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        if how == "lying_huge":  # declares more than the limit, sends a small valid body
            small = self.dumps(self.valid_body())
            return Case("huge_body", "POST", "/api/v1/generate", small,
                        [("Content-Length", str(r.choice([10**9, 2**63, 10**30])))], content_length=False)
        if how == "lying_small":  # declares a small length, sends more: the rest is the next "request"
            return Case("huge_body", "POST", "/api/v1/generate", body, [("Content-Length", "10")], content_length=False)
        return self.post("huge_body", body)

    def bad_headers(self) -> Case:
        r = self.rng
        body = self.dumps(self.valid_body())
        headers = r.choice([
            [("Content-Type", "text/plain")], [("Content-Type", "multipart/form-data; boundary=x")],
            [("Content-Type", "application/json; charset=utf-16")], [("Content-Encoding", "gzip")],
            [("X-API-Key", "x" * 5000)], [("X-API-Key", "\x7f\x80\xff")], [("Accept", "image/png")],
            [("Expect", "100-continue")], [("X-Forwarded-For", "1.2.3.4, ../../")], [("Range", "bytes=0-1")],
            [("Content-Length", "-1")], [("Content-Length", "abc")], [("Content-Length", " 12")],
            [("Content-Length", "1"), ("Content-Length", "2")], [("Transfer-Encoding", "gzip, chunked")],
            [("Host", "")], [("X-" + "a" * 100, "b" * 20000)],
        ])
        return Case("bad_headers", "POST", "/api/v1/generate", body, [("Content-Type", "application/json")] + headers,
                    content_length=not any(k == "Content-Length" for k, _ in headers))

    def wrong_method(self) -> Case:
        method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "POST",
                                  "PROPFIND", "get", "G\x00T"])
        route = self.rng.choice(ROUTES)
        if method == "POST" and route == "/api/v1/generate":
            route = "/api/v1/health"
        if method == "GET" and route not in ("/api/v1/generate",):
            route = "/api/v1/generate"
        body = self.dumps(self.valid_body()) if self.rng.random() < 0.5 else b""
        return Case("wrong_method", method, route, body)

    def query(self, n_valid: float = 0.5) -> str:
        """A query string: some valid pairs, some hostile ones, in a random order."""
        r = self.rng
        pairs: list[str] = []
        if r.random() < n_valid:
            b = self.valid_body()
            pairs += [f"{k}={quote(str(v))}" for k, v in b.items()]
        for _ in range(r.randint(0, 4)):
            key = r.choice(QUERY_KEYS + ["", "x", "family[]", "prompt%00", "🔥", "seed;seed", "a" * 300, "__proto__"])
            value = r.choice(QUERY_VALUES + [quote(r.choice(HOSTILE_NAMES).encode("utf-8", "surrogatepass"), safe="")] + [quote(r.choice(HOSTILE_PROMPTS).encode("utf-8", "surrogatepass"), safe="")])
            pairs.append(r.choice([f"{key}={value}", f"{key}", f"{key}=", f"={value}", f"{key}={value}={value}"]))
        r.shuffle(pairs)
        sep = r.choice(["&", "&", "&", ";", "&&"])
        return sep.join(pairs)

    def stream_query(self) -> Case:
        q = self.query()
        early = self.rng.random() < 0.2
        return Case("stream_query", "GET", "/api/v1/generate/stream?" + q, early_close=early)

    def download_query(self) -> Case:
        return Case("download_query", "GET", "/api/v1/download?" + self.query())

    def valid_stream_abandoned(self) -> Case:
        """A valid stream the client leaves after its first bytes: the generation must stop, the slot free."""
        b = self.valid_body()
        return Case("stream_abandoned", "GET", "/api/v1/generate/stream?" + urlencode(b), early_close=True)

    def grids(self) -> Case:
        name = quote(self.rng.choice(HOSTILE_NAMES + ["workspace"]).encode("utf-8", "surrogatepass"), safe=self.rng.choice(["", "/"]))
        family = quote(self.rng.choice(HOSTILE_NAMES + list(FAMILIES)).encode("utf-8", "surrogatepass"), safe=self.rng.choice(["", "/"]))
        return Case("grid_names", "GET", f"/api/v1/experiments/{name or 'x'}/grid/{family or 'x'}.png")

    def unknown_route(self) -> Case:
        route = self.rng.choice(UNKNOWN_ROUTES)
        return Case("unknown_route", self.rng.choice(["GET", "POST"]), route,
                    self.dumps(self.valid_body()) if self.rng.random() < 0.3 else b"")

    def weird_query_elsewhere(self) -> Case:
        route = self.rng.choice(["/api/v1/health", "/api/v1/experiments", "/api/v1/generate", "/"])
        method = "POST" if route == "/api/v1/generate" else "GET"
        body = self.dumps(self.valid_body()) if method == "POST" else b""
        return Case("weird_query", method, f"{route}?{self.query(0.2)}", body, [("Content-Type", "application/json")])

    def malformed_http(self) -> Case:
        raw = self.rng.choice([
            b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
            b"GET /api/v1/health HTTP/1.0\r\n\r\n", b"GET http://evil.example/api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\nConnection: close\r\n\r\n",
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\nConnection: close\r\n\r\n",
            b"GET /api/v1/health HTTP/1.1\nHost: x\nConnection: close\n\n",
            b"GET /api/v1/health\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /api/v1/he alth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40),  # a TLS ClientHello on the plain port
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"\r\n\r\n\r\n", bytes(self.rng.randrange(256) for _ in range(200)) + b"\r\n\r\n",
        ])
        return Case("malformed_http", "", "", raw=raw, timeout=5.0)

    def valid(self) -> Case:
        """A few well-formed requests in the mix, so the fuzz also runs the generation paths."""
        return self.post("valid", self.dumps(self.valid_body()))

    WEIGHTS = {"bad_json": 6, "truncated_json": 5, "not_an_object": 4, "deep_nesting": 3, "wrong_types": 8,
               "weird_numbers": 8, "huge_values": 6, "hostile_names": 8, "hostile_prompts": 7, "unknown_fields": 4,
               "huge_body": 4, "bad_headers": 4, "wrong_method": 5, "stream_query": 6, "download_query": 5,
               "valid_stream_abandoned": 1, "grids": 4, "unknown_route": 4, "weird_query_elsewhere": 3,
               "malformed_http": 3, "valid": 2}

    def make(self) -> Case:
        names = list(self.WEIGHTS)
        name = self.rng.choices(names, weights=[self.WEIGHTS[n] for n in names])[0]
        return getattr(self, name)()


def fuzz_cases(n: int, seed: int, families: list[str]) -> list[Case]:
    maker = CaseMaker(random.Random(seed), list(families))
    return [maker.make() for _ in range(n)]


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None  # no (complete) reply: why
    ms: float


def dechunk(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        end = data.find(b"\r\n", i)
        if end < 0:
            break
        try:
            size = int(data[i:end].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        i = end + 2 + size + 2
    return bytes(out)


def send_raw(host: str, port: int, data: bytes, timeout: float, early_close: bool = False) -> Reply:
    """Send ``data`` on a new connection and read the reply until the server closes it (or ``timeout``)."""
    t = time.perf_counter()
    chunks: list[bytes] = []
    error = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError) as e:
                error = f"while sending: {type(e).__name__}"  # the server answered early and closed: read it
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    b = s.recv(1 << 16)
                except ConnectionResetError as e:
                    error = error or f"while reading: {type(e).__name__}"
                    break
                except socket.timeout:
                    error = "timeout"
                    break
                if not b:
                    break
                chunks.append(b)
                if early_close and b"\r\n\r\n" in b"".join(chunks):
                    break  # the head (and maybe the start event) arrived: go away
            else:
                error = "timeout"
    except OSError as e:
        error = f"connect: {type(e).__name__}: {e}"
    ms = 1000 * (time.perf_counter() - t)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1") and body.startswith(b"HTTP/"):  # 100 Continue, then the answer
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = None
    if lines and lines[0].startswith(b"HTTP/"):
        parts = lines[0].split(b" ")
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return Reply(status, headers, body, error if status is None else None, ms)


def stream_errors(body: bytes) -> list[dict]:
    """The ``error`` events of an SSE body whose status is 5xx."""
    out = []
    for block in body.decode("utf-8", "replace").split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0] == "event: error":
            try:
                data = json.loads(lines[1].removeprefix("data: "))
            except (IndexError, json.JSONDecodeError):
                data = {"status": 500, "error": block[:300]}
            if int(data.get("status") or 500) >= 500:
                out.append(data)
    return out


def status_class(status: int | None) -> str:
    return "no reply" if status is None else f"{status // 100}xx"


def traceback_of(text: str) -> str:
    """The last traceback in a slice of the server's log (or the slice's tail)."""
    i = text.rfind("Traceback (most recent call last)")
    return (text[i:] if i >= 0 else text[-2000:]).strip()


def fuzz(url: str, n: int = 500, seed: int = 0, families: list[str] | None = None, log: ServerProcess | None = None,
         timeout: float = 120.0, verbose: bool = False) -> dict[str, Any]:
    """``n`` hostile requests (seeded) against the server at ``url``; a report of what came back.

    ``report["server_errors"]`` lists every 5xx that is not a deliberate 503 with Retry-After, every SSE
    error event with a 5xx status and every request without a reply (each with the request and, when
    ``log`` is the server, the traceback it logged); ``report["healthy_after"]`` says whether
    /api/v1/health answered afterwards with no generation running or waiting and one sprite per family
    was generated."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    families = list(families or FAMILIES)
    cases = fuzz_cases(n, seed, families)
    by_class: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    deliberate_503: list[dict] = []
    errors: list[dict] = []
    times: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    for k, case in enumerate(cases):
        start = log.log_size() if log else 0
        reply = send_raw(host, port, case.wire(f"{host}:{port}"), case.timeout or timeout, case.early_close)
        times.append((reply.ms, case.describe(120)))
        cls = status_class(reply.status)
        if case.early_close and reply.status is not None:
            cls = f"{cls} (left early)"
        by_class[cls] = by_class.get(cls, 0) + 1
        by_kind.setdefault(case.kind, {}).setdefault(cls, 0)
        by_kind[case.kind][cls] += 1
        problem = None
        if reply.status is None:
            # a malformed request line may be dropped without an answer; anything else must get one
            if case.kind != "malformed_http" or reply.error == "timeout":
                problem = f"no reply ({reply.error})"
        elif reply.status == 503 and "retry-after" in reply.headers:
            deliberate_503.append({"request": case.describe(), "body": reply.body[:300].decode("utf-8", "replace")})
        elif reply.status >= 500:
            problem = f"{reply.status}"
        elif reply.status == 200 and "event-stream" in reply.headers.get("content-type", "") and not case.early_close:
            bad = stream_errors(reply.body)
            if bad:
                problem = f"SSE error event {bad[0]}"
        if problem:
            tb = ""
            if log:
                time.sleep(0.3)  # uvicorn logs the traceback after it has sent the 500
                tb = traceback_of(log.log_text(start))
            errors.append({"index": k, "kind": case.kind, "problem": problem, "request": case.describe(),
                           "response": reply.body[:300].decode("utf-8", "replace"), "traceback": tb})
        if verbose:
            print(f"{k:4d} {reply.status} {reply.ms:8.1f} ms {case.describe(100)}")
    elapsed = time.perf_counter() - t0
    health = check_health_after(url, families)
    times.sort(reverse=True)
    return {"requests": n, "seed": seed, "families": families, "elapsed_s": elapsed, "by_class": by_class,
            "by_kind": by_kind, "deliberate_503": deliberate_503, "server_errors": errors,
            "slowest": [{"ms": round(ms, 1), "request": d} for ms, d in times[:5]], **health}


def check_health_after(url: str, families: list[str], settle_s: float = 60.0) -> dict[str, Any]:
    """Health answers, every slot comes free (nothing running or waiting), and one sprite per family is made."""
    out: dict[str, Any] = {"healthy_after": False, "health_after": None, "generate_after": {}}
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/api/v1/health", timeout=10)
        except httpx.TransportError as e:
            out["health_after"] = f"{type(e).__name__}: {e}"
            time.sleep(1)
            continue
        out["health_after"] = {"status_code": r.status_code, **({k: r.json().get(k) for k in ("status", "running", "waiting", "generated", "cancelled", "failed")} if r.status_code == 200 else {})}
        if r.status_code == 200 and r.json().get("running") == 0 and r.json().get("waiting") == 0:
            break
        time.sleep(1)
    ok = isinstance(out["health_after"], dict) and out["health_after"].get("status") == "ok" \
        and out["health_after"].get("running") == 0 and out["health_after"].get("waiting") == 0
    for family in families:
        body = {"prompt": PROMPTS[0], "family": family, "seed": 7}
        if family == "ldm":
            body["steps"] = 2
        try:
            r = httpx.post(url + "/api/v1/generate", json=body, timeout=300)
            out["generate_after"][family] = r.status_code
        except httpx.TransportError as e:
            out["generate_after"][family] = f"{type(e).__name__}"
        ok = ok and out["generate_after"][family] == 200
    out["healthy_after"] = ok
    return out


def format_fuzz(report: dict[str, Any]) -> str:
    lines = [f"fuzz: {report['requests']} requests (seed {report['seed']}) in {report['elapsed_s']:.1f} s",
             "  by status class: " + ", ".join(f"{k} {v}" for k, v in sorted(report["by_class"].items()))]
    lines.append(f"  {'kind':<24}" + "".join(f"{c:>18}" for c in sorted(report["by_class"])))
    for kind, counts in sorted(report["by_kind"].items()):
        lines.append(f"  {kind:<24}" + "".join(f"{counts.get(c, 0):>18}" for c in sorted(report["by_class"])))
    lines.append(f"  deliberate 503 with Retry-After: {len(report['deliberate_503'])}")
    lines.append(f"  server errors (5xx but deliberate 503, SSE 5xx events, no reply): {len(report['server_errors'])}")
    lines.append(f"  health after: {report['health_after']}; one sprite per family after: {report['generate_after']}; "
                 f"healthy: {report['healthy_after']}")
    lines.append("  slowest: " + "; ".join(f"{s['ms']:.0f} ms {s['request'][:80]}" for s in report["slowest"][:3]))
    for e in report["server_errors"]:
        last = e["traceback"].strip().splitlines()[-1] if e["traceback"].strip() else ""
        lines.append(f"  !! #{e['index']} {e['problem']}: {e['request'][:200]}\n     -> {e['response'][:200]}\n     {last}")
    return "\n".join(lines)


def error_signature(e: dict[str, Any]) -> str:
    """An error's exception class and the last line of spritegen's own code it passed through."""
    tb = e["traceback"].strip().splitlines()
    if not tb or not tb[0].startswith("Traceback"):
        return e["problem"]
    frames = [ln.strip() for ln in tb if ln.strip().startswith("File ") and "/spritegen/" in ln]
    where = ""
    if frames:
        m = re.match(r'File ".*/(spritegen/[^"]+)", line (\d+), in (\S+)', frames[-1])
        where = f" at {m.group(1)}:{m.group(2)} ({m.group(3)})" if m else f" at {frames[-1]}"
    return tb[-1].split(":")[0] + where


def short_traceback(tb: str) -> str:
    """A traceback's frames in spritegen (and the last frame, where it raised) with their code, and the error."""
    lines = tb.strip().splitlines()
    frames = [i for i, ln in enumerate(lines) if ln.strip().startswith("File ")]
    keep = [i for i in frames if "/spritegen/" in lines[i]] + frames[-1:]
    out = []
    for i in sorted(set(keep)):
        out.append("  " + lines[i].strip())
        if i + 1 < len(lines) and not lines[i + 1].strip().startswith(("File ", "^")):
            out.append("      " + lines[i + 1].strip())
    return "\n".join(out + lines[-1:])


def server_error_groups(report: dict[str, Any]) -> dict[str, list[dict]]:
    """The server errors grouped by exception class and place (one group per bug, usually)."""
    groups: dict[str, list[dict]] = {}
    for e in report["server_errors"]:
        groups.setdefault(error_signature(e), []).append(e)
    return groups


# ------------------------------------------------------------------------------------------------- main


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="folder with params.yaml and models/<family>")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=None, help="default: every trained family")
    ap.add_argument("--requests", type=int, default=20, help="timed requests per family and batch size")
    ap.add_argument("--batch", type=int, default=8, help="the batch's num_samples (serve.max_samples is 8)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the throughput run")
    ap.add_argument("--throughput-requests", type=int, default=None, help="one-sprite requests shared by the clients (default: 2 x --requests)")
    ap.add_argument("--skip-fuzz", action="store_true")
    ap.add_argument("--fuzz-requests", type=int, default=500)
    ap.add_argument("--fuzz-seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="serve.device for the server (default: the project's params.yaml)")
    ap.add_argument("--out", type=Path, default=Path("bench_serve.json"), help="JSON with every figure")
    ap.add_argument("--verbose", action="store_true", help="print each fuzz request as it is answered")
    args = ap.parse_args()

    import torch

    total = args.throughput_requests or 2 * args.requests
    results: dict[str, Any] = {"project": str(args.project.resolve()), "requests": args.requests, "batch": args.batch,
                               "clients": args.clients, "throughput_requests": total, "cpu_count": os.cpu_count(),
                               "torch": torch.__version__, "load_avg_start": os.getloadavg(),
                               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    with running_server(args.project, device=args.device) as srv:
        health = srv.health
        trained = [f for f, e in health["families"].items() if e["trained"]]
        families = args.families or trained
        untrained = [f for f in families if f not in trained]
        if untrained:
            print(f"not trained (skipped): {', '.join(untrained)}")
        families = [f for f in families if f in trained]
        limits = health["limits"]
        print(f"spritegen serve {health['version']} at {srv.url}: device {health['device']}, "
              f"max_concurrency {limits['max_concurrency']}, defaults {health['defaults']}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}")
        results.update({"device": health["device"], "limits": limits, "defaults": health["defaults"],
                        "checkpoints": {f: health["families"][f]["checkpoint"] for f in families},
                        "latency": [], "throughput": [], "warm_up_ms": {}})
        for family in families:
            results["warm_up_ms"][family] = warm_up(srv.url, family)
            for batch in (1, args.batch):
                results["latency"].append(latency(srv.url, family, args.requests, batch, seed0=10_000 * batch))
            results["throughput"].append(throughput(srv.url, family, args.clients, total))
        if not args.skip_fuzz:
            results["fuzz"] = fuzz(srv.url, args.fuzz_requests, args.fuzz_seed, families, log=srv)
        results["load_avg_end"] = os.getloadavg()

    print()
    print(f"latency: {args.requests} sequential requests per row after a warm-up; ms; client = wall time of the "
          f"request, server = generation_ms")
    print(f"{'family':<7}{'batch':>6}{'n':>4}{'client p50':>12}{'client p95':>12}{'server p50':>12}{'server p95':>12}"
          f"{'p50/sprite':>12}{'first req':>11}")
    for row in results["latency"]:
        per = row["client_p50_ms"] / row["batch"] if row["client_p50_ms"] is not None else None
        first = results["warm_up_ms"][row["family"]] if row["batch"] == 1 else None
        print(f"{row['family']:<7}{row['batch']:>6}{row['n']:>4}{fmt(row['client_p50_ms']):>12}{fmt(row['client_p95_ms']):>12}"
              f"{fmt(row['server_p50_ms']):>12}{fmt(row['server_p95_ms']):>12}{fmt(per):>12}{fmt(first, 0):>11}")
        if row["failed"]:
            print(f"   {len(row['failed'])} failed: {row['failed'][0]}")
    print()
    print(f"throughput: {args.clients} concurrent clients, {total} one-sprite requests per family; 429/503 answers are "
          f"retried after Retry-After")
    print(f"{'family':<7}{'served':>8}{'429':>6}{'503':>6}{'other':>7}{'wall s':>9}{'req/s':>8}{'sprites/s':>11}"
          f"{'client p50':>12}{'client p95':>12}{'server p50':>12}")
    for row in results["throughput"]:
        print(f"{row['family']:<7}{row['ok']:>8}{row['429']:>6}{row['503']:>6}{len(row['other']) + row['gave_up']:>7}"
              f"{row['wall_s']:>9.1f}{row['requests_per_s']:>8.2f}{row['sprites_per_s']:>11.2f}"
              f"{fmt(row['client_p50_ms']):>12}{fmt(row['client_p95_ms']):>12}{fmt(row['server_p50_ms']):>12}")
        if row["other"] or row["retry_after_missing"]:
            print(f"   other answers: {row['other'][:3]}; 429/503 without Retry-After: {row['retry_after_missing']}")
    status = 0
    if "fuzz" in results:
        print()
        print(format_fuzz(results["fuzz"]))
        groups = server_error_groups(results["fuzz"])
        if groups:
            print("\nserver errors by exception (first request of each, and the server's traceback):")
            for last, items in groups.items():
                print(f"\n== {len(items)} x {last}\n{items[0]['request'][:400]}\n{short_traceback(items[0]['traceback'])}")
        if results["fuzz"]["server_errors"] or not results["fuzz"]["healthy_after"]:
            status = 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
