"""The HTTP face of a :class:`~mmdiag.serve.service.CaseService`: a FastAPI app with a versioned API and the case page.

Routes: ``GET /`` (the case page), ``GET /static/*`` (its files), ``GET /healthz``, ``GET /v1/model`` (the model
card), ``POST /v1/predict`` (one case), OpenAPI at ``/openapi.json`` and Swagger UI at ``/docs`` (served from the
swagger-ui-bundle package, so it works offline; FastAPI's default loads it from a CDN).

Protection, in the order a request meets it: the body-size limit (:class:`BodyLimit`, an ASGI middleware: 413 before
the body is read when ``Content-Length`` says too much, and while streaming when it lies or is absent); the bearer
token on ``/v1/*`` when one is set; the multipart limits (files, fields, part size); a bounded inference queue
(:class:`InferenceQueue`: 503 when full, 504 past the timeout); then the service's own checks of every file and
value (4xx naming the field). Errors are JSON ``{"error": {"status", "field", "message"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from mmdiag.serve.service import CaseService
from mmdiag.serve.uploads import UploadError

__all__ = ["BodyLimit", "InferenceQueue", "create_app"]


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status_code=status)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413, whatever ``Content-Length`` says."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"the request body exceeds the limit of {self.limit:,} bytes"
        try:
            if declared is not None and int(declared) > self.limit:
                await _error(413, None, too_large)(scope, receive, send)
                return
        except ValueError:
            await _error(400, None, "Content-Length is not a number")(scope, receive, send)
            return
        seen, started = 0, False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _error(413, None, too_large)(scope, receive, send)


class InferenceQueue:
    """Runs inference on one worker thread; at most ``limit`` requests wait or run, each for ``timeout`` seconds.

    A request over the limit gets 503 at once; one still waiting after ``timeout`` gets 504 (its slot is freed when
    the worker has finished it, so the count always reflects the work the model still has).
    """

    def __init__(self, limit: int, timeout: float):
        self.limit, self.timeout, self.pending = limit, timeout, 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmdiag-infer")

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self.pending >= self.limit:
            raise UploadError(503, None, f"busy: {self.pending} requests are queued or running (limit {self.limit}); "
                                         "retry shortly")
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise UploadError(504, None, f"the prediction took longer than {self.timeout:g} s") from None

    def _done(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved, so a timed-out request's error is not logged as unhandled

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _openapi_form(service: CaseService) -> dict[str, Any]:
    """The multipart body of ``POST /v1/predict`` for this run, for the OpenAPI document."""
    props: dict[str, Any] = {}
    for card in service.card["modalities"]:
        if card["kind"] == "tabular":
            for f in card["fields"]:
                schema: dict[str, Any] = ({"type": "string", "enum": f["values"]} if f["type"] == "categorical"
                                          else {"type": "number"})
                if f["type"] == "numeric":
                    schema |= {json_key: f[key] for key, json_key in (("min", "minimum"), ("max", "maximum"))
                               if f[key] is not None}
                props[f["key"]] = {**schema, "description": f"record field ({f.get('unit') or 'no unit'})"}
            props[card["name"]] = {"type": "string", "description": "the whole record as a JSON object {field: value}"}
        else:
            props[card["name"]] = {"type": "string", "format": "binary",
                                   "description": f"{card['kind']}: {', '.join(card['formats']).upper()}"}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": props}}}}}


def create_app(service: CaseService, *, token: str | None = None, queue_limit: int = 8,
               timeout: float = 60.0) -> FastAPI:
    """The app serving ``service``.

    Args:
        service: the loaded run.
        token: bearer token required on ``/v1/*`` (None: no token).
        queue_limit: requests waiting or running at once before 503.
        timeout: seconds a prediction may take before 504.
    """
    queue = InferenceQueue(queue_limit, timeout)
    app = FastAPI(title=f"mmdiag: {service.card['model']['name']} ({service.card['run']})", version="1",
                  description="Predictions with explanation maps from a trained mmdiag run. Research use only.",
                  lifespan=_lifespan(queue), docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=service.limits.max_request_bytes)
    n_images = sum(card["kind"] != "tabular" for card in service.card["modalities"])
    n_fields = sum(len(card.get("fields", [])) + 1 for card in service.card["modalities"])

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, e: UploadError) -> JSONResponse:
        return _error(e.status, e.field, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, None, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        return _error(422, ".".join(map(str, first["loc"][1:])) or None, first["msg"])

    @app.middleware("http")
    async def _no_cache_outside_api(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        response = await call_next(request)
        if not request.url.path.startswith("/v1/"):
            response.headers["Cache-Control"] = "no-cache"  # the page's files always match the installed version
        return response

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        if token is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                refused = _error(401, "Authorization", "a bearer token is required (Authorization: Bearer TOKEN)")
                refused.headers["WWW-Authenticate"] = "Bearer"
                return refused
        return await call_next(request)

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": queue.pending}

    @app.get("/v1/model", summary="the model card: modalities, record fields, tasks, test metrics, intended use")
    async def model_card() -> dict[str, Any]:
        return {**service.card, "auth": token is not None}

    @app.post("/v1/predict", summary="probabilities and explanation maps for one case",
              openapi_extra=_openapi_form(service))
    async def predict(request: Request, explain: bool = True) -> dict[str, Any]:
        unknown = sorted(set(request.query_params) - {"explain"})
        if unknown:
            raise UploadError(422, unknown[0], f"{unknown[0]}: unknown query parameter; the only one is 'explain'")
        files, fields = await _read_body(request, n_images, n_fields)
        return await queue.run(lambda: service.predict(files, fields, explain=explain))

    static = resources.files("mmdiag.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    # Swagger UI from the swagger-ui-bundle package, not FastAPI's default CDN: /docs works offline
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title,
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    return app


def _lifespan(queue: InferenceQueue):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    return lifespan


async def _read_body(request: Request, n_images: int, n_fields: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """The uploaded files and form fields of a request; each name at most once.

    Raises:
        UploadError: 400 malformed multipart or JSON, 415 another content type, 422 a repeated name.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UploadError(400, None, f"the body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise UploadError(422, None, "the JSON body must be an object {\"modality.field\": value}")
        return {}, {k: "" if v is None else (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in body.items()}
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UploadError(415, None, f"content type {kind or 'none'!r}: send multipart/form-data (files and fields) "
                                     "or application/json (record fields only)")
    try:
        form = await request.form(max_files=n_images, max_fields=n_fields, max_part_size=64 * 1024)
    except StarletteHTTPException as e:
        raise UploadError(400, None, f"malformed form data: {e.detail}") from None
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if name in files or name in fields:
                raise UploadError(422, name, f"{name}: given more than once")
            if isinstance(value, str):
                fields[name] = value
            else:
                files[name] = await value.read()
    finally:
        await form.close()
    return files, fields
