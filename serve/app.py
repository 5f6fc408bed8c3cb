"""The ASGI app: configuration, the models it serves, bearer-key auth and OpenAI-style errors.

`create_app(config)` builds one FastAPI app. Models load once, on first use
(`Models.text()` / `Models.video()`), so the app starts at once and a test can hand in its own
(`create_app(config, models=...)`); with ``preload`` (`mdiff serve`'s default) a background
thread loads and warms both at start (`Models.warm`). Every error leaves as OpenAI's JSON shape,
``{"error": {"message", "type", "param", "code"}}``: `mdiff.errors.InvalidInputError` → 400
(`BodyTooLarge`, a JSON body past ``Limits.max_body_bytes``, → 413; `BodyEncoded`, a body sent
compressed, → 415), `CheckpointError` → 500 naming the model, an unknown route → 404, a
missing or wrong bearer key → 401 (only when `api_key` is set; `/` and the static page stay
open so a browser can load it, and its calls send the key); a WebSocket without it (header, or
``?api_key=`` as browsers must) is refused at the handshake (close code 1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.websockets import WebSocketClose

from mdiff.errors import CheckpointError, InvalidInputError, MdiffError
from mdiff.record import published_name
from mdiff.serve.limits import Limits

__all__ = ["BodyTooLarge", "Models", "ServeConfig", "api_error", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
OPEN_PATHS = ("/", "/static", "/favicon.ico", "/health")  # no key: the page, the health check
PAGE_FILES = {p.name for p in STATIC.iterdir() if p.is_file()}  # /app.js, /style.css: open too


@dataclass
class ServeConfig:
    """What `mdiff serve` takes: where to listen, which models, the key and the bounds."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    video_model: str = "shapes-t2v"
    text_model: str = "code-tiny-block"
    trust_remote_code: bool = False  # let a text model folder run its own code (LLaDA 2)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    home: str | None = None  # the provenance home (keys, identity); None: mdiff's default
    # browser origins (other than the page's own) that may call the API; "*" for any
    cors_origins: tuple[str, ...] = ()
    preload: bool = False  # load and warm the models in the background at start (`mdiff serve`)

    @property
    def text_name(self) -> str:
        """The text model as clients see and name it: a folder by its name, never its path."""
        return published_name(self.text_model)

    @property
    def video_name(self) -> str:
        return published_name(self.video_model)

    def names_text(self, asked) -> bool:
        """Whether a client's ``model`` names the text model (Ollama's ``:latest`` too)."""
        names = {self.text_model, self.text_name}
        return asked in names | {f"{n}:latest" for n in names}


class Models:
    """The served models, loaded once on first use (thread-safe)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._lock = threading.Lock()
        self._text = self._video = None
        self.failure: str | None = None  # why preloading failed (`warm`)
        self.on_failure = None  # called after a failed preload (`mdiff serve` stops then)

    def text(self):
        """The text model (`mdiff.text.CodeModel`)."""
        with self._lock:
            if self._text is None:
                from mdiff.serve import compute
                from mdiff.text import CodeModel

                self._text = compute.call(
                    CodeModel.from_pretrained,
                    self.config.text_model,
                    trust_remote_code=self.config.trust_remote_code,
                    stamper=self._stamper(),
                )
            return self._text

    def loaded_text(self) -> bool:
        """Whether the text model is loaded (without loading it)."""
        return self._text is not None

    def warm(self) -> None:
        """Load both models and fill one 2-token hole, so that the first request waits neither
        for loading nor for first-run set-up (the watermark table, kernels). A failure is
        kept in `failure` (``/health`` answers it) and `on_failure` is called."""
        from mdiff.serve import compute

        log, start = logging.getLogger("uvicorn.error"), time.perf_counter()
        try:
            cm = self.text()
            log.info("mdiff: text model %s", getattr(cm, "summary", None) or self.config.text_name)
            compute.call(cm.infill, "x = ", "\n", 2)
            self.video()
        except Exception as e:  # noqa: BLE001 — reported again by the request that needs it
            self.failure = " ".join(str(e).split())
            log.error("mdiff: loading the models failed: %s", self.failure)
            if self.on_failure is not None:
                self.on_failure()
            return
        log.info("mdiff: models ready in %.1f s", time.perf_counter() - start)

    def video(self):
        """The video pipeline (`mdiff.video.VideoPipeline`)."""
        with self._lock:
            if self._video is None:
                from mdiff.serve import compute
                from mdiff.video import VideoPipeline

                self._video = compute.call(VideoPipeline.from_pretrained, self.config.video_model,
                                           stamper=self._stamper())  # fmt: skip
            return self._video

    def _stamper(self):
        """Provenance under the configured home (keys, identity, prompt-commitment secret)."""
        from mdiff.provenance.stamp import Stamper

        return Stamper(home=self.config.home)


class BodyTooLarge(InvalidInputError):
    """A request body past its bound (answered 413)."""


class BodyEncoded(InvalidInputError):
    """A request body sent compressed (``Content-Encoding``; answered 415)."""


async def read_json(request):
    """The JSON body, read up to ``Limits.max_body_bytes`` (`BodyTooLarge` beyond)."""
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise BodyEncoded(f"the body is sent with Content-Encoding {coding}; send the JSON "
                          "uncompressed")  # fmt: skip
    limit, data = request.app.state.config.limits.max_body_bytes, bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes (Limits.max_body_bytes)")
    try:
        return json.loads(bytes(data) or b"null")
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError; an int past 4300 digits
        raise InvalidInputError(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidInputError("the body's JSON is nested too deeply") from None


def api_error(status: int, message: str, kind: str = "invalid_request_error", *,
              param: str | None = None, code: str | None = None,
              headers: dict | None = None) -> JSONResponse:  # fmt: skip
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def client_shaped(request: HTTPConnection, response):
    """``response`` as the route's clients read errors: Ollama's (``/api/...``) take
    ``{"error": "message"}``; every other route keeps OpenAI's shape."""
    if not request.url.path.startswith("/api/") or not isinstance(response, JSONResponse):
        return response
    error = json.loads(response.body).get("error") if response.status_code >= 400 else None
    if not isinstance(error, dict):
        return response
    keep = {k: v for k, v in response.headers.items()
            if k.lower() in ("retry-after", "www-authenticate")}  # fmt: skip
    return JSONResponse({"error": error["message"]}, status_code=response.status_code,
                        headers=keep)  # fmt: skip


def _authorised(request: HTTPConnection, key: str | None) -> bool:
    if key is None:
        return True
    path = request.url.path
    if path == "/" or any(path.startswith(p) for p in OPEN_PATHS[1:]) or path[1:] in PAGE_FILES:
        return True
    got = request.headers.get("authorization", "")
    if not got and request.url.path.startswith("/v1/realtime"):  # browsers: no WS headers
        got = "Bearer " + request.query_params.get("api_key", "")
    scheme, _, token = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())


class _BearerAuth:
    """A missing or wrong key: 401 over HTTP, a refused WebSocket handshake (close 1008).

    Plain ASGI, so it sees WebSockets too (``@app.middleware("http")`` does not) and adds no
    task or body stream per request as Starlette's ``BaseHTTPMiddleware`` does."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and not _authorised(HTTPConnection(scope),
                                                                      self.key):  # fmt: skip
            if scope["type"] == "websocket":
                refuse = WebSocketClose(code=1008, reason="missing or wrong API key")
            else:  # in the shape the route's clients read (Ollama's on /api/...)
                refuse = client_shaped(HTTPConnection(scope), api_error(
                    401, "missing or wrong API key (Authorization: Bearer …)",
                    "authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"}))  # fmt: skip
            return await refuse(scope, receive, send)
        await self.app(scope, receive, send)


ENDPOINTS = (
    "completions are POST /v1/completions (OpenAI, with 'suffix' for FIM), "
    "/v1/fim/completions (Mistral, Continue), /infill (llama.cpp) and /api/generate "
    "(Ollama); also GET /v1/models, GET /api/tags, GET /health, POST /v1/videos, "
    "WS /v1/realtime/video, POST /v1/verify, GET /v1/files/{id}, the page at /"
)


def _route_of(app: FastAPI, scope) -> str | None:
    """How the API's own routes (not the page's files) match this request: "full", "partial"
    (the path with another method) or None."""
    best = None
    for r in app.routes:
        if getattr(r, "name", "") == "static":
            continue
        match = r.matches(scope)[0]
        if match == Match.FULL:
            return "full"
        if match == Match.PARTIAL:
            best = "partial"
    return best


def create_app(config: ServeConfig | None = None, *, models: Models | None = None) -> FastAPI:
    """The app for `config` (default: built-in models, loopback, no key)."""
    from fastapi.staticfiles import StaticFiles

    from mdiff.serve import files_api, fim_api, ollama_api, text_api, verify_api, video_api

    config = config or ServeConfig()

    @contextlib.asynccontextmanager
    async def _lifespan(_app):
        if config.preload:  # the app answers at once; the models get ready meanwhile
            threading.Thread(target=app.state.models.warm, name="mdiff-preload",
                             daemon=True).start()  # fmt: skip
        yield
        await asyncio.to_thread(video_api.finalize_all)  # shutdown/SIGTERM: sign live streams

    app = FastAPI(title="mdiff", docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.config, app.state.models = config, models or Models(config)

    if config.api_key is not None:
        app.add_middleware(_BearerAuth, key=config.api_key)
    if config.cors_origins:  # outside the key check: a browser's preflight carries no key
        from starlette.middleware.cors import CORSMiddleware

        exposed = ["X-Mdiff-Id", "X-Mdiff-Status", "Retry-After"]
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=exposed)  # fmt: skip

    @app.get("/health")
    async def _health():
        """llama.cpp's health check (open, as there): 200, or 503 while the text model is
        being preloaded (``mdiff serve`` loads it in the background at start), 500 if that
        failed."""
        if app.state.models.failure is not None:
            why = f"the models could not be loaded: {app.state.models.failure}"
            return api_error(500, why, "server_error", code="load_failed")
        if app.state.models.loaded_text() or not config.preload:
            return {"status": "ok"}
        return api_error(503, "loading the model", "unavailable_error", code="loading")

    @app.exception_handler(InvalidInputError)
    async def _invalid(request, exc):
        if isinstance(exc, BodyTooLarge):
            return client_shaped(request, api_error(413, str(exc), code="body_too_large"))
        if isinstance(exc, BodyEncoded):
            return client_shaped(request, api_error(415, str(exc), code="unsupported_encoding"))
        return client_shaped(request, api_error(400, str(exc)))

    @app.exception_handler(CheckpointError)
    async def _checkpoint(request, exc):
        error = api_error(500, f"model could not be loaded: {exc}", "server_error")
        return client_shaped(request, error)

    @app.exception_handler(MdiffError)
    async def _mdiff(request, exc):
        return client_shaped(request, api_error(500, str(exc), "server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        error = api_error(exc.status_code, str(exc.detail), "invalid_request_error",
                          headers=getattr(exc, "headers", None))  # fmt: skip
        if exc.status_code in (404, 405) and request.scope.get("type") == "http":
            # the page's files answer every other path (405 to a POST): say what is here
            route, what = _route_of(app, request.scope), f"{request.method} {request.url.path}"
            if route == "partial":
                error = api_error(405, f"{what}: not this method", "invalid_request_error",
                                  code="method_not_allowed")  # fmt: skip
            elif route is None and (
                exc.status_code == 405 or request.url.path[:4] in ("/v1/", "/api")
            ):
                error = api_error(404, f"no endpoint {what} here; {ENDPOINTS}",
                                  "invalid_request_error", code="unknown_url")  # fmt: skip
        return client_shaped(request, error)

    for module in (text_api, fim_api, ollama_api, video_api, verify_api, files_api):
        app.include_router(module.router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
