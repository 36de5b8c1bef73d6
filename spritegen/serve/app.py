"""The generation API and its web page: ``spritegen serve`` (docs/serve.md).

    POST /api/v1/generate          {prompt, num_samples, seed, family, experiment?, steps?, guidance?, sampler?, temperature?}
    GET  /api/v1/generate/stream   the same fields as query parameters -> Server-Sent Events
    GET  /api/v1/download          ?prompt=&seed=&family=... -> image/png
    GET  /api/v1/health            families (trained? loaded? checkpoint hash), device, uptime, limits
    GET  /api/v1/experiments       spritegen compare's table as JSON, with links to sample grids
    GET  /api/v1/experiments/{name}/grid/{family}.png
    GET  /                         the web page (spritegen/serve/static: plain HTML, CSS and JS)

Every error is JSON ``{"error": words, "field": the field or null, "status": code}``: 422 for a bad
field (named), 401 without the API key, 413 for a body over the limit, 429/503 with ``Retry-After``
when the queue is full or a slot does not free in time, 503 with the training command for a family
that is not trained.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spritegen.errors import UserError
from spritegen.serve.config import SAMPLERS, ServeConfig
from spritegen.serve.experiments import Experiments
from spritegen.serve.models import WORKSPACE, ModelStore, NotTrained, Refused

STATIC = Path(__file__).parent / "static"
SAMPLE_KEYS = ("sampler", "steps", "guidance", "temperature", "batch_size")  # the sample section's settings a generator takes
LATENT_ONLY = ("temperature",)  # fields of the cvae and gan families
DIFFUSION_ONLY = ("steps", "guidance", "sampler")  # fields of the ldm family


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


class AsciiJSON(JSONResponse):
    """Strict JSON with every non-ASCII character escaped: a lone surrogate a client sent (echoed in an
    error's field name) cannot be encoded as UTF-8, but its escape can; a NaN metric becomes null, which
    a browser's JSON.parse accepts."""

    def render(self, content: Any) -> bytes:
        return json.dumps(finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return AsciiJSON({"error": message, "field": field, "status": status}, status_code=status, headers=headers)


class GenerateRequest(BaseModel):
    """The request body; strict, so "3" is not a number and an unknown field is an error naming it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    family: str
    num_samples: int = 1
    seed: int = 0
    experiment: str | None = None
    steps: int | None = None
    guidance: float | int | None = None
    sampler: str | None = None
    temperature: float | int | None = None


@dataclass
class Settings:
    """A request resolved against the limits and the family's defaults: what is generated, and reported."""

    prompt: str
    family: str
    experiment: str
    num_samples: int
    seed: int
    sampling: dict[str, Any]  # the family's own settings (steps/guidance/sampler, or temperature)

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "family": self.family, "experiment": self.experiment,
                "num_samples": self.num_samples, "seed": self.seed,
                "seeds": [self.seed + k for k in range(self.num_samples)], **self.sampling}


def resolve(req: GenerateRequest, cfg: ServeConfig, defaults: dict[str, Any]) -> Settings:
    """Check every limit (before any compute) and fill the family's defaults; a 422 names the field."""
    if req.family not in cfg.families:
        raise ApiError(422, f"unknown family {req.family!r}; this server offers {', '.join(cfg.families)}", "family")
    prompt = req.prompt.strip()
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): JSON allows the escape, the tokenizer cannot read it
        raise ApiError(422, "the prompt holds a character that is not valid Unicode text (a lone surrogate)", "prompt") from None
    if not prompt:
        raise ApiError(422, "the prompt is empty: describe the sprite", "prompt")
    if len(req.prompt) > cfg.max_prompt_chars:
        raise ApiError(422, f"the prompt has {len(req.prompt)} characters; the limit is {cfg.max_prompt_chars}", "prompt")
    if not 1 <= req.num_samples <= cfg.max_samples:
        raise ApiError(422, f"num_samples must be between 1 and {cfg.max_samples}, got {req.num_samples}", "num_samples")
    if not 0 <= req.seed <= cfg.max_seed - cfg.max_samples:
        raise ApiError(422, f"seed must be between 0 and {cfg.max_seed - cfg.max_samples}, got {req.seed}", "seed")
    if req.experiment is not None and (len(req.experiment) > 200 or not req.experiment.strip()):
        raise ApiError(422, "experiment must be a name from /api/v1/experiments", "experiment")
    foreign = DIFFUSION_ONLY if req.family != "ldm" else LATENT_ONLY
    for name in foreign:
        if getattr(req, name) is not None:
            raise ApiError(422, f"{name} does not apply to the {req.family} family", name)
    if req.family == "ldm":
        steps = defaults["steps"] if req.steps is None else req.steps
        guidance = defaults["guidance"] if req.guidance is None else req.guidance  # compared before float(): 10**400 overflows it
        sampler = defaults["sampler"] if req.sampler is None else req.sampler
        if not 1 <= steps <= cfg.max_steps:
            raise ApiError(422, f"steps must be between 1 and {cfg.max_steps}, got {steps}", "steps")
        if not 0 <= guidance <= cfg.max_guidance:  # NaN fails both comparisons
            raise ApiError(422, f"guidance must be between 0 and {cfg.max_guidance}, got {guidance}", "guidance")
        if sampler not in SAMPLERS:
            raise ApiError(422, f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}", "sampler")
        sampling = {"steps": steps, "guidance": float(guidance), "sampler": sampler}
    else:
        temperature = defaults["temperature"] if req.temperature is None else req.temperature
        if not 0 <= temperature <= cfg.max_temperature:
            raise ApiError(422, f"temperature must be between 0 and {cfg.max_temperature:g}, got {temperature}", "temperature")
        sampling = {"temperature": float(temperature)}
    return Settings(prompt, req.family, req.experiment or WORKSPACE, req.num_samples, req.seed, sampling)


QUERY_TYPES: dict[str, type] = {"prompt": str, "family": str, "num_samples": int, "seed": int, "experiment": str,
                                "steps": int, "guidance": float, "sampler": str, "temperature": float}


def from_query(params, allowed: tuple[str, ...] = tuple(QUERY_TYPES)) -> GenerateRequest:
    """The stream's and the download's query string as a request (each value converted, or a 422 naming it)."""
    data: dict[str, Any] = {}
    for key, value in params.multi_items():
        if key not in allowed:
            raise ApiError(422, f"unknown parameter {key!r}; parameters: {', '.join(allowed)}", key)
        if key in data:
            raise ApiError(422, f"{key} is given twice", key)
        try:
            data[key] = QUERY_TYPES[key](value)
        except ValueError:
            raise ApiError(422, f"{key} must be {'an integer' if QUERY_TYPES[key] is int else 'a number'}, got {value[:40]!r}", key) from None
    return parse_request(data)


def parse_request(data: Any) -> GenerateRequest:
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def validation_error(errors) -> ApiError:
    """Pydantic's first error, as words naming the field."""
    if not errors:
        return ApiError(422, "invalid request")
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query")]
    field = loc[0] if loc else None
    kind = err.get("type", "")
    if kind == "missing":
        msg = f"{field} is required"
    elif kind == "extra_forbidden":
        msg = f"unknown field {field!r}; fields: {', '.join(GenerateRequest.model_fields)}"
    elif kind == "string_unicode":
        msg = "the body holds a string that is not valid Unicode text (a lone surrogate such as \\ud800)"
    elif kind == "model_type" or field is None:
        msg = "the body must be a JSON object such as {\"prompt\": \"a red fire type pokemon\", \"family\": \"gan\"}"
    else:
        msg = f"{field}: {err.get('msg', 'invalid')}"
    return ApiError(422, msg, field)


def png_bytes(image) -> bytes:
    """(3, R, R) uint8 -> PNG bytes (PIL writes no timestamp: the same pixels, the same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def b64_pngs(images) -> list[str]:
    return [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]


class Cancelled(Exception):
    """Raised inside a generation whose client went away; its thread stops at the next step."""


class Slots:
    """At most ``size`` generations at once, at most ``queue`` waiting; one more is 429, a wait over
    ``timeout`` seconds is 503. Both carry Retry-After, so an overloaded server never hangs a client."""

    def __init__(self, size: int, queue: int, timeout: float):
        self.size, self.queue, self.timeout = size, queue, timeout
        self.sem = asyncio.Semaphore(size)
        self.running = self.waiting = 0

    async def acquire(self) -> None:
        if self.sem.locked() and self.waiting >= self.queue:
            raise ApiError(429, f"the server is busy ({self.running} generating, {self.waiting} waiting): retry shortly",
                           headers={"Retry-After": "2"})
        self.waiting += 1
        try:
            await asyncio.wait_for(self.sem.acquire(), self.timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no generation slot freed within {self.timeout:g} s: retry later",
                           headers={"Retry-After": str(max(1, int(self.timeout)))}) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self.sem.release()


class Server:
    """The app's state: the config, the model store, the experiments table, the slots and counters."""

    def __init__(self, cfg: ServeConfig, project: Path, sample_defaults: dict[str, Any], device: str):
        self.cfg, self.project, self.defaults, self.device = cfg, project, sample_defaults, device
        self.experiments = Experiments(project, cfg.families, cfg.experiments_ttl_s)
        self.store = ModelStore(project, cfg.models_dir, cfg.families, cfg.device, sample_defaults,
                                experiments=self.experiments.revs)
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="generate")
        self.slots: Slots | None = None  # made in the event loop (asyncio primitives belong to one loop)
        self.started = time.time()
        self.counts = {"generated": 0, "cancelled": 0, "failed": 0}
        self._count_lock = threading.Lock()

    def count(self, key: str) -> None:
        with self._count_lock:
            self.counts[key] += 1

    def generate(self, s: Settings, on_preview: Callable | None = None, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Runs in a worker thread: load (once), generate, encode. ``cancel`` stops it between steps."""
        loaded = self.store.get(s.family, s.experiment)
        gen = with_settings(loaded.generator, s, preview_every=self.cfg.preview_every)

        def preview(step: int, steps: int, images) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if on_preview is not None and images is not None:
                on_preview({"step": step, "steps": steps, "images": b64_pngs(images)})

        t0 = time.perf_counter()
        prompts, seeds = [s.prompt] * s.num_samples, [s.seed + k for k in range(s.num_samples)]
        try:
            images = gen.generate(prompts, seeds, on_preview=preview if (on_preview or cancel) else None)
        except Cancelled:
            self.count("cancelled")
            raise
        except Exception:
            self.count("failed")
            raise
        ms = (time.perf_counter() - t0) * 1000
        self.count("generated")
        return {"family": s.family, "experiment": s.experiment, "version": loaded.version, "images": b64_pngs(images),
                "generation_ms": round(ms, 1), "resolution": gen.resolution, "device": self.device, "settings": s.as_dict()}

    async def run(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Take a slot (or 429/503), start ``fn`` on a worker thread; the slot frees when the thread ends,
        even when the client that asked has gone."""
        if self.slots is None:
            self.slots = Slots(self.cfg.max_concurrency, self.cfg.max_queue, self.cfg.queue_timeout_s)
        await self.slots.acquire()
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        future.add_done_callback(lambda _: self.slots.release())
        return future


def with_settings(gen, s: Settings, **extra):
    """The request's sampling settings on a shallow copy of the loaded generator: the copy shares the
    modules, not the settings, so two requests at once never see each other's."""
    import copy

    view = copy.copy(gen)
    for k, v in {**s.sampling, **extra}.items():
        setattr(view, k, v)
    return view


def create_app(cfg: ServeConfig, project: Path = Path("."), sample_defaults: dict[str, Any] | None = None,
               api_key: str | None = None) -> FastAPI:
    from spritegen.runtime import pick_device

    project = Path(project).resolve()
    from spritegen.sampling import SampleConfig

    defaults = {k: getattr(SampleConfig(), k) for k in SAMPLE_KEYS} | (sample_defaults or {})
    server = Server(cfg, project, defaults, str(pick_device(cfg.device)))
    app = FastAPI(title="spritegen", version=_version(), default_response_class=AsciiJSON, docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.state.server = server

    install_errors(app)
    if api_key:
        require_key(app, api_key)

    async def checked_folder(s: Settings) -> None:
        """422/503 before taking a slot; off the event loop, since an experiment's name may need
        `dvc exp show` (seconds) or a copy out of the DVC cache."""
        await asyncio.get_running_loop().run_in_executor(None, server.store.folder, s.family, s.experiment)

    async def generate_response(req: GenerateRequest) -> dict[str, Any]:
        s = resolve(req, cfg, defaults)
        await checked_folder(s)
        return await (await server.run(lambda: server.generate(s)))

    @app.post("/api/v1/generate")
    async def generate(request: Request):
        body = await request.body()
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:  # bad JSON or bytes, a 5,000-digit number, deep nesting
            raise ApiError(422, f"the body is not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
        return await generate_response(parse_request(data))

    @app.get("/api/v1/download")
    async def download(request: Request):
        req = from_query(request.query_params, tuple(k for k in QUERY_TYPES if k != "num_samples"))
        out = await generate_response(req)
        name = re.sub(r"[^a-z0-9]+", "-", req.prompt.lower()).strip("-")[:48] or "sprite"
        filename = f"spritegen-{req.family}-{name}-seed{req.seed}.png"
        return Response(base64.b64decode(out["images"][0]), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                 "X-Model-Version": out["version"]})

    @app.get("/api/v1/generate/stream")
    async def stream(request: Request):
        s = resolve(from_query(request.query_params), cfg, defaults)
        await checked_folder(s)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def work():
            try:
                result = server.generate(s, lambda p: loop.call_soon_threadsafe(queue.put_nowait, ("preview", p)), cancel)
                loop.call_soon_threadsafe(queue.put_nowait, ("result", result))
            except Cancelled:
                pass  # counted by server.generate; nobody is listening
            except Exception as e:  # noqa: BLE001 - reported to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, ("error", error_payload(e)))

        future = await server.run(work)  # 429/503 here are plain responses, before the stream starts

        async def events():
            try:
                yield sse("start", {"settings": s.as_dict()})
                while True:
                    get = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({get, future}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:  # the work ended: drain what it queued, then stop
                        get.cancel()
                        while not queue.empty():
                            kind, data = queue.get_nowait()
                            yield sse(kind, data)
                        break
                    kind, data = get.result()
                    yield sse(kind, data)
                yield sse("end", {})
            finally:
                cancel.set()  # the client disconnected (or we finished): stop the work at its next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/v1/health")
    async def health():
        return {"status": "ok", "version": _version(), "device": server.device,
                "uptime_s": round(time.time() - server.started, 1), "families": server.store.status(),
                "running": server.slots.running if server.slots else 0,
                "waiting": server.slots.waiting if server.slots else 0, **server.counts,
                "limits": {"max_prompt_chars": cfg.max_prompt_chars, "max_samples": cfg.max_samples, "max_steps": cfg.max_steps,
                           "max_guidance": cfg.max_guidance, "max_temperature": cfg.max_temperature, "max_seed": cfg.max_seed - cfg.max_samples,
                           "max_concurrency": cfg.max_concurrency, "samplers": list(SAMPLERS)},
                "defaults": {k: defaults[k] for k in ("sampler", "steps", "guidance", "temperature")},
                "api_key_required": bool(api_key)}

    @app.get("/api/v1/experiments")
    async def experiments():
        return await asyncio.get_running_loop().run_in_executor(None, server.experiments.table)

    @app.get("/api/v1/experiments/{name}/grid/{family}.png")
    async def grid(name: str, family: str):
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, server.experiments.grid, name, family)
        except FileNotFoundError as e:
            raise ApiError(404, str(e)) from None
        return Response(data, media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return BodyLimit(app, cfg.max_body_bytes)


def install_errors(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers JSON {error, field, status} in words."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.field, e.headers)

    @app.exception_handler(UserError)  # NotTrained: 503 with the command; Refused and the rest: 422
    async def _user_error(request: Request, e: UserError):
        p = error_payload(e)
        return error_response(p["status"], p["error"], p["field"], {"Retry-After": "60"} if p["status"] == 503 else None)

    @app.exception_handler(Exception)  # a bug still answers in the API's shape (and is logged by uvicorn)
    async def _bug(request: Request, e: Exception):
        return error_response(500, f"internal error ({e.__class__.__name__}): please report it with the request")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        err = validation_error(e.errors())
        return error_response(err.status, err.message, err.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        words = {404: f"no such page: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(e.status_code, words.get(e.status_code, str(e.detail)))


def require_key(app: FastAPI, api_key: str) -> None:
    """/api/v1 (but health) needs the X-API-Key header; compared in constant time."""

    @app.middleware("http")
    async def _api_key(request: Request, call_next):
        if request.url.path.startswith("/api/v1/") and request.url.path != "/api/v1/health":
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error_response(401, "missing or wrong API key: send it in the X-API-Key header", "X-API-Key")
        return await call_next(request)


def error_payload(e: Exception) -> dict[str, Any]:
    if isinstance(e, ApiError):
        return {"error": e.message, "field": e.field, "status": e.status}
    if isinstance(e, NotTrained):
        return {"error": str(e), "field": "family", "status": 503}
    if isinstance(e, Refused):
        return {"error": str(e), "field": e.field, "status": 422}
    if isinstance(e, UserError):
        return {"error": str(e), "field": None, "status": 422}
    return {"error": f"generation failed: {e.__class__.__name__}: {e}", "field": None, "status": 500}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spritegen")
    except PackageNotFoundError:
        return "0+unknown"


class BodyLimit:
    """ASGI wrapper: a request body over ``max_bytes`` (declared or streamed) is 413 before the app reads it."""

    def __init__(self, app: FastAPI, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.state = app.state  # tests and the CLI reach the server through the wrapper

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()  # then the disconnect, for the stream

        await self.app(scope, replayed, send)

    async def _too_large(self, scope, receive, send):
        await error_response(413, f"the request body is over {self.max_bytes} bytes", None)(scope, receive, send)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args) -> int:
    """``spritegen serve``: the params' ``serve`` section, with --host/--port/--family on top."""
    import os
    import sys

    import uvicorn

    from spritegen.params import load_sections
    from spritegen.repro import reproducible

    sections = load_sections(["serve", "sample"], args.params, args.preset)
    cfg: ServeConfig = sections["serve"]
    host = args.host or cfg.host
    port = cfg.port if args.port is None else args.port
    if args.family:
        unknown = [f for f in args.family if f not in ("ldm", "cvae", "gan")]
        if unknown:
            raise UserError(f"--family {unknown[0]!r}: families are ldm, cvae, gan")
        cfg.families = list(dict.fromkeys(args.family))
    if not is_loopback(host):
        if not args.allow_remote:
            raise UserError(f"--host {host} would serve every machine that can reach this one; add --allow-remote "
                            f"to mean it (and set {cfg.api_key_env} to require an API key)")
        print(f"warning: serving on {host}:{port}, reachable from other machines"
              f"{'' if os.environ.get(cfg.api_key_env) else f' and without an API key ({cfg.api_key_env} is not set)'}",
              file=sys.stderr)
    reproducible(cfg.threads)
    sample = sections["sample"]
    app = create_app(cfg, Path("."), {k: getattr(sample, k) for k in SAMPLE_KEYS},
                     api_key=os.environ.get(cfg.api_key_env) or None)
    for family, entry in app.state.server.store.status().items():
        state = f"checkpoint {entry['checkpoint']}" if entry["trained"] else f"not trained: {entry['train_command']}"
        print(f"  {family}: {state}", file=sys.stderr)
    print(f"spritegen serve: http://{host}:{port}/ (API: /api/v1, docs: /api/docs)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


@contextlib.contextmanager
def in_thread(app, host: str = "127.0.0.1"):
    """Serve ``app`` with uvicorn on a free port in a background thread; yields the base URL. For
    notebooks, the tests and docs/serve/screenshot.py (real sockets: streams, disconnects, browsers)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
