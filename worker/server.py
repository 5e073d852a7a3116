"""The worker as an HTTP server on a machine of your own: `python -m worker.server [--host H] [--port P]`.

One ASGI app (FastAPI on uvicorn) and one `OcrService` for the process, started in the app's
lifespan, so concurrent requests of every door share the engine's batches like concurrent RunPod jobs.
Routes:
- the original DeepSeek-OCR FastAPI service, as its README shows them: `POST /ocr/free`,
  `/ocr/markdown`, `/ocr` (multipart `file`, an image or a PDF; `mode` as a query parameter or a
  form field; `/ocr` also `prompt`) -> `{"text"|"markdown", "mode"}`, and `GET /healthz` -> `{"ok": true}`;
- the DeepSeek-OCR-2 OpenAI-compatible server: `POST /v1/chat/completions` (SSE with `stream`),
  `GET /v1/models`, `GET /health`;
- RunPod's job API, so a client of the endpoint works here unchanged: `POST /runsync`, `POST /run`,
  `GET|POST /status/{id}`, `GET|POST /stream/{id}`, `POST /cancel/{id}` (`openai_route` inputs too;
  with STREAM_PAGES the outputs are the streamed items, as RunPod aggregates them);
- `/docs` and `/openapi.json`; the browser UI at `/` when `webui/dist` is built, else `/` -> `/docs`.

Errors keep the worker's codes: the worker's error shape (`{"error": "code: ...", "error_detail"}`)
on the worker's routes, OpenAI's error object on `/v1`, with HTTP statuses from `protocols.http_status`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .errors import ConfigError, EngineDead, InvalidInput, PayloadTooLarge, WorkerError, error_output
from .protocols.http_status import UNPROCESSABLE, http_status
from .protocols.openai_chat import models_list, openai_error, parse_chat_request
from .protocols.openai_jobs import complete_chat, open_chat_stream
from .protocols.runpod_openai import handle_openai_job, is_openai_job, stream_openai_job
from .service import OcrService
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The original service's defaults (its README): `/ocr` sends this prompt when none is given.
ORIGINAL_DEFAULT_PROMPT = "<image>\nFree OCR. "
# A request carries at most MAX_INPUT_BYTES of files, as base64 in JSON (4/3 of the bytes) or raw in
# a multipart form; 1 MiB more leaves room for the rest of the JSON and the form's boundaries.
REQUEST_SLACK_BYTES = 1024 * 1024
# RunPod keeps a /run result 30 minutes.
DEFAULT_RESULT_TTL_S = 1800.0
PDF_MAGIC = b"%PDF-"
PDF_HEADER_WINDOW = 1024  # PDF readers accept the header anywhere in the first 1024 bytes
OPENAI_PREFIX = "/v1/"
WEBUI_DIR = Path(__file__).resolve().parent.parent / "webui" / "dist"


@dataclass(frozen=True)
class ServerConfig:
    """The server's own settings (the engine's and the jobs' come from `Settings`)."""

    max_request_bytes: int
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    webui_dir: Path = WEBUI_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServerConfig":
        limit = settings.max_request_bytes or settings.max_input_bytes * 4 // 3 + REQUEST_SLACK_BYTES
        return cls(max_request_bytes=limit, result_ttl_s=settings.result_ttl_s,
                   webui_dir=settings.webui_dir or WEBUI_DIR)


@dataclass
class JobRecord:
    """A job of the RunPod-style routes: RunPod's status names, its task while it runs, the items it
    produced (`/stream` hands out the new ones), and its result once done."""

    id: str
    submitted: float
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] = field(default_factory=dict)  # {"output": ...} or {"error": ..., "error_detail": ...}
    items: list[Any] = field(default_factory=list)
    streamed: int = 0
    task: asyncio.Task | None = None

    def view(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = round((self.started - self.submitted) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = round((self.finished - self.started) * 1000)
        body.update(self.result)
        return body

    def take_stream(self) -> list[dict[str, Any]]:
        """The items not handed out yet, as RunPod's `/stream` wraps them."""
        new, self.streamed = self.items[self.streamed:], len(self.items)
        return [{"output": item} for item in new]


class Runtime:
    """What the app holds while it runs: the service, the RunPod-style jobs, whether the engine died."""

    def __init__(self, service: OcrService, config: ServerConfig):
        self.service = service
        self.config = config
        self.jobs: dict[str, JobRecord] = {}
        self.engine_dead = False
        self.started = int(time.time())

    @property
    def healthy(self) -> bool:
        return not self.engine_dead and not self.service.shutting_down

    def note_failure(self, exc: BaseException, job_id: str) -> dict[str, Any]:
        """Log a failure once (the service's one place) and remember a dead engine for the health
        routes; returns the worker's error shape."""
        if isinstance(exc, EngineDead):
            self.engine_dead = True
        output = self.service.failure(exc, job_id)
        output.pop("refresh_worker", None)  # RunPod's flag; nothing replaces a local server
        return output

    def submit(self, job_input: Any, prefix: str = "") -> JobRecord:
        """Start a job in the background, as RunPod queues one; `/status` and `/stream` read it."""
        self.purge()
        record = JobRecord(id=new_job_id(prefix), submitted=time.time())
        record.task = asyncio.create_task(self._execute(record, job_input))
        self.jobs[record.id] = record
        return record

    async def _execute(self, record: JobRecord, job_input: Any) -> None:
        """The job as the RunPod handler runs it: whole (a dict, or FAILED with its `error`), or with
        STREAM_PAGES as a stream whose items RunPod aggregates, ending FAILED at an item with `error`."""
        record.status, record.started = "IN_PROGRESS", time.time()
        streaming = self.service.settings.stream_pages
        try:
            if not streaming:
                whole = await (handle_openai_job(self.service, job_input, record.id) if is_openai_job(job_input)
                               else self.service.handle_job(job_input, record.id))
                failed = self._failed_item(whole)
                if failed is None:
                    record.items.append(whole)
            else:
                failed = None
                items = stream_openai_job(self.service, job_input, record.id) if is_openai_job(job_input) \
                    else self.service.stream_outputs(job_input, record.id)
                async for item in items:
                    failed = self._failed_item(item)
                    if failed is not None:
                        break
                    record.items.append(item)
        except asyncio.CancelledError:
            record.status, record.finished = "CANCELLED", time.time()
            raise
        except Exception as exc:  # the handlers answer every failure themselves; this is a bug's last net
            failed = self._failed_item(self.note_failure(exc, record.id))
        if failed is not None:
            record.status, record.result = "FAILED", failed
        else:
            output = record.items if streaming else record.items[0]
            record.status, record.result = "COMPLETED", {"output": output}
        record.finished = time.time()

    def _failed_item(self, item: Any) -> dict[str, Any] | None:
        """An item that fails the job, as RunPod reads it: a dict with an `error` key."""
        if not isinstance(item, dict) or "error" not in item:
            return None
        # The service asks RunPod to replace a worker whose engine died; here that means unhealthy.
        if item.pop("refresh_worker", None):
            self.engine_dead = True
        return {k: item[k] for k in ("error", "error_detail") if k in item}

    def purge(self) -> None:
        """Forget finished jobs older than RESULT_TTL_S (RunPod keeps a /run result 30 minutes)."""
        cutoff = time.time() - self.config.result_ttl_s
        for job_id in [j.id for j in self.jobs.values() if j.finished is not None and j.finished < cutoff]:
            del self.jobs[job_id]

    async def close(self) -> None:
        for record in self.jobs.values():
            if record.task is not None and not record.task.done():
                record.task.cancel()
        await self.service.close()


def create_app(settings: Settings, config: ServerConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            service = await OcrService.start(settings)
        except ConfigError as exc:
            log.error("worker cannot start: %s", exc)
            raise
        app.state.runtime = Runtime(service, config)
        try:
            yield
        finally:
            await app.state.runtime.close()

    app = FastAPI(title="DeepSeek-OCR worker", lifespan=lifespan, version="1",
                  description="Images and PDFs to text and markdown with DeepSeek-OCR. The original "
                              "DeepSeek-OCR service's routes, an OpenAI-compatible chat API, and "
                              "RunPod's job API (`/runsync`, `/run`, `/status`) on one engine queue.")
    app.exception_handler(RequestValidationError)(_validation_error)
    _add_original_routes(app)
    _add_openai_routes(app)
    _add_runpod_routes(app)
    index = config.webui_dir / "index.html"
    if index.is_file():
        # Mounted last: every API route above wins over a file of the same path.
        app.mount("/", StaticFiles(directory=config.webui_dir, html=True), name="webui")
    else:
        app.get("/", include_in_schema=False)(lambda: RedirectResponse("/docs"))
    # Order matters: the CORS layer (added last, outermost) also dresses the size limit's 413.
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    return app


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def new_job_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _error_response(runtime: Runtime, exc: BaseException, job_id: str, *, openai: bool = False,
                    params: Mapping[str, str] | None = None) -> JSONResponse:
    output = runtime.note_failure(exc, job_id)
    body = openai_error(exc, params) if openai else output
    return JSONResponse(body, status_code=http_status(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation (a missing form field, a body that is not a JSON object): 422, in the
    route's error shape, naming the field."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
    error = InvalidInput(str(first.get("msg", "invalid request")), field=".".join(loc) or "body")
    body = openai_error(error) if request.url.path.startswith(OPENAI_PREFIX) else error_output(error)
    return JSONResponse(body, status_code=UNPROCESSABLE)


# --- the original DeepSeek-OCR FastAPI service ----------------------------------------------------

def _add_original_routes(app: FastAPI) -> None:
    tags = ["original DeepSeek-OCR API"]

    @app.get("/healthz", tags=tags)
    async def healthz(runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        return JSONResponse({"ok": runtime.healthy}, status_code=200 if runtime.healthy else 503)

    @app.post("/ocr/free", tags=tags, summary="Plain text of an image or PDF -> {text, mode}")
    async def ocr_free(file: UploadFile = File(...), mode: str | None = Query(None),
                       form_mode: str | None = Form(None, alias="mode"),
                       runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        return await _original(runtime, file, mode, form_mode, {"task": "ocr"}, "text")

    @app.post("/ocr/markdown", tags=tags, summary="Markdown of an image or PDF -> {markdown, mode}")
    async def ocr_markdown(file: UploadFile = File(...), mode: str | None = Query(None),
                           form_mode: str | None = Form(None, alias="mode"),
                           runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        return await _original(runtime, file, mode, form_mode, {"task": "markdown"}, "markdown")

    @app.post("/ocr", tags=tags, summary="Any prompt on an image or PDF -> {text, mode}")
    async def ocr_prompt(file: UploadFile = File(...), mode: str | None = Query(None),
                         prompt: str = Query(ORIGINAL_DEFAULT_PROMPT),
                         form_mode: str | None = Form(None, alias="mode"),
                         runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        return await _original(runtime, file, mode, form_mode, {"task": "custom", "prompt": prompt}, "text")


async def _original(runtime: Runtime, file: UploadFile, query_mode: str | None, form_mode: str | None,
                    task: dict[str, Any], key: str) -> JSONResponse:
    job_id = new_job_id("ocr-")
    try:
        data = await file.read()
        job_input = {**original_job_input(data, query_mode, form_mode), **task}
        doc = await runtime.service.run_job(job_input, job_id)
    except Exception as exc:  # every failure answers in the worker's error shape
        if isinstance(exc, WorkerError) and exc.field in ("image", "pdf"):
            exc.field = "file"  # the caller sent a form field, not a job's `image` or `pdf`
        return _error_response(runtime, exc, job_id)
    return JSONResponse({key: getattr(doc, key) or "", "mode": doc.mode})


def original_job_input(data: bytes, query_mode: str | None, form_mode: str | None) -> dict[str, Any]:
    """An uploaded file and its mode as a job input: a PDF by its header, anything else an image
    (whose type the decoder sniffs). The seed's examples send `mode` in the query, its quick start as a
    form field; both work, and they must agree."""
    if not data:
        raise InvalidInput("the uploaded file is empty", field="file")
    if query_mode is not None and form_mode is not None and query_mode != form_mode:
        raise InvalidInput(f"query says {query_mode!r} and form says {form_mode!r}; send one", field="mode")
    source = "pdf" if PDF_MAGIC in data[:PDF_HEADER_WINDOW] else "image"
    job_input: dict[str, Any] = {source: base64.b64encode(data).decode("ascii")}
    mode = query_mode if query_mode is not None else form_mode
    if mode is not None:
        job_input["mode"] = mode
    return job_input


# --- the OpenAI-compatible server ------------------------------------------------------------------

_CHAT_EXAMPLE = {"model": "deepseek-ai/DeepSeek-OCR-2", "max_tokens": 8192, "messages": [{
    "role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,<base64 of the page>"}},
        {"type": "text", "text": "<|grounding|>Convert the document to markdown."}]}]}


def _add_openai_routes(app: FastAPI) -> None:
    tags = ["OpenAI-compatible API"]

    @app.get("/health", tags=tags)
    async def health(runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        healthy = runtime.healthy
        return JSONResponse({"status": "ok" if healthy else "unavailable"}, status_code=200 if healthy else 503)

    @app.get("/v1/models", tags=tags)
    async def models(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
        return models_list(runtime.service.model_name, runtime.started)

    @app.post("/v1/chat/completions", tags=tags, response_model=None,
              summary="Chat completion over image_url parts; `stream: true` sends one chunk per page")
    async def chat_completions(body: dict[str, Any] = Body(..., examples=[_CHAT_EXAMPLE]),
                               runtime: Runtime = Depends(get_runtime)) -> JSONResponse | StreamingResponse:
        job_id = new_job_id()
        params: Mapping[str, str] = {}
        try:
            chat = parse_chat_request(body, max_tokens_cap=runtime.service.settings.max_tokens)
            params = chat.params
            if chat.stream:
                events = await open_chat_stream(runtime.service, chat, job_id)
                return StreamingResponse(events, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return JSONResponse(await complete_chat(runtime.service, chat, job_id))
        except Exception as exc:  # OpenAI's error object, with the worker's code
            return _error_response(runtime, exc, job_id, openai=True, params=params)


# --- RunPod's job API ------------------------------------------------------------------------------

_RUNPOD_EXAMPLE = {"input": {"image": "<base64, data: URL or https URL>", "task": "markdown"}}
# Keys of a RunPod request body besides `input`: `policy` (timeouts, priority) means nothing on one
# machine and is ignored; a webhook or an S3 target this server cannot honour is refused.
_IGNORED_RUN_KEYS = frozenset({"policy"})


def _add_runpod_routes(app: FastAPI) -> None:
    tags = ["RunPod job API"]

    @app.post("/runsync", tags=tags, summary="Run a job and wait: {id, status, output | error}")
    async def runsync(body: dict[str, Any] = Body(..., examples=[_RUNPOD_EXAMPLE]),
                      runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        try:
            job_input = read_run_body(body)
        except InvalidInput as exc:
            return _error_response(runtime, exc, "")
        record = runtime.submit(job_input, prefix="sync-")
        # Shielded: a caller that hangs up (a page reload) can still read the result at /status.
        try:
            await asyncio.shield(record.task)
        except asyncio.CancelledError:
            if not record.task.cancelled():  # this request was cancelled, not the job (/cancel)
                raise
        return JSONResponse(record.view())

    @app.post("/run", tags=tags, summary="Queue a job: {id, status}; poll /status/{id}")
    async def run(body: dict[str, Any] = Body(..., examples=[_RUNPOD_EXAMPLE]),
                  runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        try:
            job_input = read_run_body(body)
        except InvalidInput as exc:
            return _error_response(runtime, exc, "")
        record = runtime.submit(job_input)
        return JSONResponse({"id": record.id, "status": record.status})

    def find(job_id: str, runtime: Runtime) -> JobRecord | JSONResponse:
        runtime.purge()
        record = runtime.jobs.get(job_id)
        if record is None:
            exc = InvalidInput(f"no job {job_id!r} (results are kept RESULT_TTL_S={runtime.config.result_ttl_s:g} "
                               "seconds)", field="id")
            return JSONResponse(error_output(exc), status_code=404)
        return record

    async def status(job_id: str, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        record = find(job_id, runtime)
        return record if isinstance(record, JSONResponse) else JSONResponse(record.view())

    async def stream(job_id: str, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        record = find(job_id, runtime)
        if isinstance(record, JSONResponse):
            return record
        body = {"id": record.id, "status": record.status, "stream": record.take_stream()}
        if "error" in record.result:
            body["error"] = record.result["error"]
        return JSONResponse(body)

    app.api_route("/status/{job_id}", methods=["GET", "POST"], tags=tags,
                  summary="A job's status, with its output once COMPLETED")(status)
    app.api_route("/stream/{job_id}", methods=["GET", "POST"], tags=tags,
                  summary="A job's items not read yet (pages with STREAM_PAGES, else the output at the end)")(stream)

    @app.post("/cancel/{job_id}", tags=tags)
    async def cancel(job_id: str, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
        record = find(job_id, runtime)
        if isinstance(record, JSONResponse):
            return record
        if record.task is not None and not record.task.done():
            record.task.cancel()  # the engine drops the job's queued pages
            record.status, record.finished = "CANCELLED", time.time()
        return JSONResponse(record.view())


def read_run_body(body: dict[str, Any]) -> Any:
    """`{"input": {...}}` as RunPod's /run and /runsync take it."""
    for key in body:
        if key != "input" and key not in _IGNORED_RUN_KEYS:
            raise InvalidInput("not supported by the local server; send 'input' (and 'policy')", field=str(key))
    if "input" not in body:
        raise InvalidInput("the request needs the job's 'input'", field="input")
    return body["input"]


# --- the request size limit ------------------------------------------------------------------------

class BodyLimit:
    """413 for a request body over `max_bytes`, in the route's error shape: at once when the declared
    Content-Length is too large, else as soon as the chunks read pass it (the app then sees the
    client gone, and whatever it answers is replaced by the 413). The rest of the body is read and
    dropped first, up to `max_bytes` more: a client still sending when the server closes gets a
    connection reset instead of the answer (browsers report a network error); a body larger than
    that is not worth reading, and the connection is closed on it."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= 2 * self.max_bytes:
                await self._drain(receive, self.max_bytes * 2)
            await self._too_large(scope, receive, send, int(declared))
            return
        received, over, ended = 0, False, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, over, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # the app failing on the cut-off body is expected; anything else is not
            if not over:
                raise
        if over:
            if not ended:
                await self._drain(receive, self.max_bytes)
            await self._too_large(scope, receive, send, received)

    @staticmethod
    async def _drain(receive: Callable, budget: int) -> None:
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))

    async def _too_large(self, scope: dict[str, Any], receive: Callable, send: Callable, size: int) -> None:
        exc = PayloadTooLarge(f"the request body ({size} bytes or more) exceeds MAX_REQUEST_BYTES "
                              f"({self.max_bytes}); send large files by URL", field="body")
        openai = str(scope.get("path", "")).startswith(OPENAI_PREFIX)
        response = JSONResponse(openai_error(exc) if openai else error_output(exc), status_code=http_status(exc),
                                headers={"Connection": "close"})
        await response(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                                                               "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        config = ServerConfig.from_settings(settings)
    except ConfigError as exc:
        print(f"worker cannot start: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(settings, config), host=args.host, port=args.port,
                                           log_level=settings.log_level.lower(), lifespan="on",
                                           timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None))
    server.run()
    return 0 if server.started else 2


if __name__ == "__main__":
    sys.exit(main())
