"""`ocr-bulk` (also `python -m worker.bulk`): OCR a folder, a glob or a list file of PDFs and images
through a deployed worker. RunPod's queue and autoscaler do the distributing; this is the client side.

A client, not part of the worker: it imports neither torch nor the worker's engine or pipeline, only
`requests` and pypdfium2, so it runs on any laptop. In: document paths. Out, per document, below
`--out` and mirroring the inputs' paths: `<name>.md` (the markdown, or the text of text tasks) and
`<name>.json` (the worker's document result; a split PDF's parts joined), each written atomically.

How it meets RunPod's limits and failures:
- Payload and time: a job's JSON body stays under `--max-payload-bytes` (/run takes 10 MB, base64
  adds a third) and a job holds at most `--max-pages-per-job` pages (RunPod's execution time-out).
  Larger PDFs go as sub-PDFs of page ranges; their results are joined in page order with the
  worker's page separator, pages renumbered to the document's.
- At most `--concurrency` jobs are in flight: submitted with /run, polled with /status. RunPod polls
  with GET; runpod's local API (`python -m worker --rp_serve_api`) allows only POST and answers GET
  with 405, so the client switches to POST. The local API runs a stored job only when it is polled,
  and a result can be read once.
- Retried with exponential back-off (`--retries` times): connection errors and time-outs, HTTP
  408/429/5xx, jobs that end TIMED_OUT or are lost by the server, jobs past `--timeout`, and the
  worker codes in TRANSIENT_JOB_CODES. Every other FAILED job is permanent and reported with the
  worker's error code, read from its /status answer (never by running the job again). A CANCELLED
  job is not retried in this run (someone stopped it on purpose) but is submitted again by the next.
- Resume: each submitted job id is journaled before it is polled and each finished part saved, so a
  run started again with the same `--out` skips finished documents and permanent failures (unless
  `--retry-failed`), polls the jobs the server still holds instead of submitting them again, and
  submits only what is left. The state lives in `<out>/.ocr-bulk/`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import io
import json
import os
import queue
import random
import re
import signal
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pypdfium2 as pdfium
import requests

CLOUD_BASE = "https://api.runpod.ai/v2"
PAGE_SPLIT = "\n\n<--- Page Split --->\n\n"  # the worker's separator between pages (worker/grounding.py)
# /run refuses bodies over 10 MB: 5 % under 10,000,000 bytes, whichever way RunPod counts a megabyte.
DEFAULT_MAX_PAYLOAD_BYTES = 9_500_000
# At the published ~3 pages/s of one H100, 20 pages take about 7 s: far inside RunPod's 10-minute default
# execution time-out even on a GPU ten times slower or with runaway pages, and under the worker's MAX_PAGES.
DEFAULT_MAX_PAGES_PER_JOB = 20
DEFAULT_CONCURRENCY = 16
DEFAULT_POLL_INTERVAL_S = 2.0
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_RETRIES = 5
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
PROGRESS_LINE_EVERY_S = 5.0  # plain progress lines when stderr is not a terminal
PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
TASKS = ("markdown", "ocr", "layout", "ocr_lines", "describe", "figure")  # those that need no query or prompt
MODES = ("tiny", "small", "base", "large", "gundam")
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# Worker codes another worker may not hit (another GPU, another upload); every other code is about the input.
# worker_shutting_down: a worker scaled down mid-job; the job itself was fine.
TRANSIENT_JOB_CODES = frozenset({"out_of_memory", "upload_failed", "worker_shutting_down"})
LOST_JOB_ERROR = "Job ID not found"  # runpod's local API, for a job already read or never stored
STATE_DIR = ".ocr-bulk"
ERROR_CODE = re.compile(r"([a-z][a-z0-9_]*): ")
PDF_SOURCE = re.compile(r"pdf#(\d+)")

_PDFIUM = threading.Lock()  # pdfium is not thread-safe, not even across documents


class Stopped(Exception):
    """The run was interrupted while this request waited to be retried."""


class FatalError(Exception):
    """Every request would fail the same way (refused API key, no such endpoint): the run stops."""


class JobLost(Exception):
    """The server no longer knows the job (local API: read once; RunPod: results expire): submit it again."""


class JobFailure(Exception):
    """A part of a document that did not complete. kind: 'transient' (retried now), 'deferred' (left for
    the next run) or 'permanent' (reported; the next run skips it unless --retry-failed)."""

    def __init__(self, code: str, message: str, kind: str, job_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.kind, self.job_id = code, message, kind, job_id

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "kind": self.kind, "job_id": self.job_id}


# ------------------------------------------------------------------ inputs and plans

@dataclass(frozen=True)
class Document:
    path: Path
    rel: str  # the path below the inputs' deepest common folder: names the outputs
    kind: str  # "pdf" or "image": the job input field
    page_count: int | None  # None: pdfium cannot open it; sent whole, the worker says why

    @property
    def pages(self) -> int:
        return self.page_count or 1


@dataclass(frozen=True)
class Part:
    """One job's share of a document: pages first..last (1-based), or the whole file as it is."""
    document: Document
    first: int
    last: int
    whole: bool

    @property
    def key(self) -> str:
        return "all" if self.whole else f"pages-{self.first:06d}-{self.last:06d}"

    @property
    def pages(self) -> int:
        return self.document.pages if self.whole else self.last - self.first + 1

    def payload(self) -> bytes:
        if self.whole:
            return self.document.path.read_bytes()
        return extract_pdf_pages(self.document.path, self.first, self.last)


@dataclass(frozen=True)
class JobOptions:
    mode: str
    task: str
    dpi: int | None = None
    max_tokens: int | None = None

    def job_input(self, kind: str, payload: bytes) -> dict[str, Any]:
        job = {kind: base64.b64encode(payload).decode("ascii"), "mode": self.mode, "task": self.task}
        if self.dpi is not None and kind == "pdf":  # the worker refuses dpi without a pdf
            job["dpi"] = self.dpi
        if self.max_tokens is not None:
            job["max_tokens"] = self.max_tokens
        return job

    def body_size(self, kind: str, payload_bytes: int) -> int:
        """Bytes of the /run body for a file of this size, without encoding it."""
        skeleton = json.dumps({"input": self.job_input(kind, b"")})
        return len(skeleton) + 4 * ((payload_bytes + 2) // 3)


def find_documents(sources: list[str]) -> list[tuple[Path, str]]:
    """Folders (searched recursively for PDFs and images), globs, single files and list files (one path
    per line, relative to the list file; blank lines and # comments skipped), in that order, once each."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and _is_document_name(p)
                            and STATE_DIR not in p.parts)
        elif path.is_file() and _is_document_name(path):
            paths.append(path)
        elif path.is_file():
            paths += _read_list_file(path)
        elif any(c in source for c in "*?["):
            paths += sorted(Path(p) for p in glob.glob(source, recursive=True)
                            if Path(p).is_file() and _is_document_name(Path(p)))
        else:
            raise ValueError(f"{source}: no such file or folder, and no glob")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if not unique:
        return []
    root = Path(os.path.commonpath([p.parent for p in unique]))
    return [(p, p.relative_to(root).as_posix()) for p in unique]


def _is_document_name(path: Path) -> bool:
    return path.suffix.lower() in PDF_SUFFIXES | IMAGE_SUFFIXES


def _read_list_file(path: Path) -> list[Path]:
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line) if Path(line).is_absolute() else path.parent / line
            if not entry.is_file():
                raise ValueError(f"{path}: listed file {line!r} does not exist")
            entries.append(entry)
    return entries


def describe_document(path: Path, rel: str) -> Document:
    with path.open("rb") as handle:
        head = handle.read(1024)
    # pdfium accepts a PDF header anywhere in the first 1 KB; the worker sniffs the same way.
    is_pdf = b"%PDF-" in head or path.suffix.lower() in PDF_SUFFIXES
    return Document(path=path, rel=rel, kind="pdf" if is_pdf else "image",
                    page_count=count_pdf_pages(path) if is_pdf else 1)


def count_pdf_pages(path: Path) -> int | None:
    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(str(path))  # by path: pdfium reads only what it needs
        except pdfium.PdfiumError:
            return None
        try:
            return len(document)
        finally:
            document.close()


def extract_pdf_pages(path: Path, first: int, last: int) -> bytes:
    """A new PDF holding pages first..last (1-based) of the file at `path`."""
    with _PDFIUM:
        source = pdfium.PdfDocument(str(path))
        try:
            target = pdfium.PdfDocument.new()
            try:
                target.import_pages(source, pages=list(range(first - 1, last)))
                buffer = io.BytesIO()
                target.save(buffer)
                return buffer.getvalue()
            finally:
                target.close()
        finally:
            source.close()


def plan_parts(document: Document, options: JobOptions, *, max_pages: int, max_payload: int) -> list[Part]:
    """The jobs for one document: the file as it is when it fits, else page ranges of at most `max_pages`,
    each halved until its body fits `max_payload`. Raises JobFailure when a single page or image alone
    is too large (such files must reach the worker by URL)."""
    size = document.path.stat().st_size
    count = document.page_count
    fits = options.body_size(document.kind, size) <= max_payload
    if document.kind == "image" or count is None:  # cannot be split: one job, if it fits
        if not fits:
            raise JobFailure("payload_too_large", f"the file is {size} bytes, over /run's payload limit as base64 "
                             f"JSON ({max_payload} bytes): send it to the worker by URL", "permanent")
        return [Part(document, 1, document.pages, whole=True)]
    if count <= max_pages and fits:
        return [Part(document, 1, count, whole=True)]
    # A stack with the first range on top; a range too large is replaced by its two halves.
    pending = [(a, min(a + max_pages - 1, count)) for a in range(1, count + 1, max_pages)][::-1]
    parts = []
    while pending:
        first, last = pending.pop()
        # Measured, not estimated: every sub-PDF carries its own copy of the fonts and images it shares.
        if options.body_size("pdf", len(extract_pdf_pages(document.path, first, last))) <= max_payload:
            parts.append(Part(document, first, last, whole=False))
        elif first == last:
            raise JobFailure("payload_too_large", f"page {first} alone is over /run's payload limit "
                             f"({max_payload} bytes as base64 JSON): send the PDF to the worker by URL",
                             "permanent")
        else:
            middle = (first + last) // 2
            pending += [(middle + 1, last), (first, middle)]
    return parts


# ------------------------------------------------------------------ results

def document_result(output: Any) -> dict[str, Any]:
    """The worker's document result from a job's output: a dict, or with STREAM_PAGES the list of items
    (the pages, then a closing document item without them). A stream's failure is its last item, which
    runpod's local API reports as COMPLETED."""
    if isinstance(output, dict):
        if "error" in output:
            raise _failure_of(output["error"], None)
        return output
    if isinstance(output, list):
        for item in output:
            if isinstance(item, dict) and "error" in item:
                raise _failure_of(item["error"], None)
        closing = [i for i in output if isinstance(i, dict) and i.get("type") == "document"]
        if closing:
            return {**closing[-1], "pages": [i for i in output if isinstance(i, dict) and i.get("type") == "page"]}
    raise JobFailure("bad_output", f"the job's output is not a document result: {str(output)[:200]}", "permanent")


def join_parts(results: list[tuple[Part, dict[str, Any]]]) -> dict[str, Any]:
    """One document result from its parts' results: pages in order with the document's page numbers and
    `pdf#N` sources, text joined with the worker's page separator, counts and usage summed."""
    ordered = sorted(results, key=lambda item: item[0].first)
    if len(ordered) == 1 and ordered[0][0].whole:
        return dict(ordered[0][1])
    outputs = [output for _, output in ordered]
    key = "markdown" if "markdown" in outputs[0] else "text"
    pages = []
    for part, output in ordered:
        offset = part.first - 1
        for page in output.get("pages") or []:
            page = {**page, "page": page["page"] + offset}
            number = PDF_SOURCE.fullmatch(str(page.get("source", "")))
            if number:
                page["source"] = f"pdf#{int(number.group(1)) + offset}"
            pages.append(page)
    page_count = sum(o.get("page_count", 0) for o in outputs)
    failed = sum(o.get("failed_pages", 0) for o in outputs)
    usage: dict[str, int] = {}
    for output in outputs:
        for name, value in (output.get("usage") or {}).items():
            usage[name] = usage.get(name, 0) + value
    if page_count and failed == page_count:
        finish = "failed"
    elif any(o.get("finish_reason") == "length" for o in outputs):
        finish = "length"  # the worker's rule: a runaway page marks the document
    else:
        finish = "stop"
    return {**outputs[0], key: PAGE_SPLIT.join(o.get(key) or "" for o in outputs), "page_count": page_count,
            "failed_pages": failed, "pages": pages, "usage": usage, "finish_reason": finish,
            "timings": {"total_s": round(sum((o.get("timings") or {}).get("total_s", 0.0) for o in outputs), 4)}}


def error_code(error: Any) -> str:
    """The worker's stable code from a FAILED job's error ("invalid_pdf: field 'pdf': ...")."""
    if isinstance(error, dict):
        return str(error.get("code") or "job_failed")
    match = ERROR_CODE.match(str(error))
    if match:
        return match.group(1)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        if "error_type" in json.loads(error):  # runpod's shape for an exception that escaped the handler
            return "handler_exception"
    return "job_failed"


def _failure_of(error: Any, job_id: str | None) -> JobFailure:
    code = error_code(error)
    kind = "transient" if code in TRANSIENT_JOB_CODES else "permanent"
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return JobFailure(code, message.removeprefix(f"{code}: "), kind, job_id)


def outcome_of(answer: dict[str, Any], job_id: str) -> Any:
    """The output of a terminal /status answer, or the JobFailure / JobLost it amounts to."""
    status = answer.get("status")
    if status == "COMPLETED":
        if answer.get("output") is None:
            # RunPod drops results it cannot store (about 19 MB) and still says COMPLETED.
            raise JobFailure("no_output", "COMPLETED without output: the result was too large for RunPod; "
                             "set BUCKET_ENDPOINT_URL on the endpoint or lower --max-pages-per-job",
                             "permanent", job_id)
        return answer["output"]
    if status == "FAILED":
        if answer.get("error") == LOST_JOB_ERROR:
            raise JobLost(job_id)
        raise _failure_of(answer.get("error", "no error given"), job_id)
    if status == "TIMED_OUT":
        raise JobFailure("timed_out", "RunPod's execution time-out ended the job (a smaller "
                         "--max-pages-per-job helps)", "transient", job_id)
    raise JobFailure("cancelled", "the job was cancelled (console, /cancel or purge-queue); the next run "
                     "submits it again", "deferred", job_id)


# ------------------------------------------------------------------ HTTP

def backoff_delay(attempt: int, retry_after: str | None = None) -> float:
    """Exponential back-off with jitter (so many clients do not retry in step); Retry-After wins."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), BACKOFF_CAP_S)
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt) * random.uniform(0.5, 1.0)


_METHOD_NOT_ALLOWED = object()  # a 405: the caller decides what it means


class Endpoint:
    """/run, /status and /cancel of one endpoint (RunPod's `https://api.runpod.ai/v2/<id>` or any base
    URL), retrying transient HTTP failures. One requests session per thread."""

    def __init__(self, base_url: str, api_key: str | None, *, retries: int, stop: threading.Event):
        self.base = base_url.rstrip("/")
        self.retries = retries
        self.stop = stop
        self._api_key = api_key
        self._sessions = threading.local()
        self._status_method = "GET"

    def submit(self, job_input: dict[str, Any]) -> str:
        # A /run whose answer is lost (reset after the server took it) is sent again: at worst a
        # duplicate job, which costs money but loses nothing.
        body = self._call("POST", "/run", {"input": job_input}, read_timeout=120, retry_read_timeout=True)
        if body is _METHOD_NOT_ALLOWED:
            raise FatalError(f"{self.base}/run does not take POST (HTTP 405): not a RunPod endpoint's base URL")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise JobFailure("bad_response", f"/run answered without a job id: {str(body)[:200]}", "transient")
        return body["id"]

    def status(self, job_id: str, read_timeout: float) -> dict[str, Any]:
        """One look at a job. The local API runs the job inside this request, so read_timeout is the
        job's remaining time; a read time-out is the job's deadline, not a reason to ask again."""
        method = self._status_method
        answer = self._call(method, f"/status/{job_id}", None, read_timeout=read_timeout, retry_read_timeout=False)
        if answer is _METHOD_NOT_ALLOWED:
            self._status_method = "POST"  # runpod's local API: /status is POST only
            answer = self._call("POST", f"/status/{job_id}", None, read_timeout=read_timeout,
                                retry_read_timeout=False)
        return answer

    def cancel(self, job_id: str) -> None:
        """Best effort: a job past the client's deadline should not keep a GPU busy (the local API has no
        /cancel and answers 404)."""
        with contextlib.suppress(requests.RequestException):
            self._session().post(f"{self.base}/cancel/{job_id}", timeout=10)

    def close(self) -> None:
        session = getattr(self._sessions, "session", None)
        if session is not None:
            session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
            if self._api_key:
                session.headers["Authorization"] = f"Bearer {self._api_key}"
        return session

    def _call(self, method: str, path: str, body: dict | None, *, read_timeout: float,
              retry_read_timeout: bool) -> Any:
        attempt = 0
        while True:
            retry_after = None
            try:
                response = self._session().request(method, self.base + path, json=body,
                                                   timeout=(10, max(read_timeout, 1)))
            except requests.ReadTimeout:
                if not retry_read_timeout:
                    raise
                problem = f"{method} {path}: no answer in {read_timeout:.0f} s"
            except requests.RequestException as exc:  # refused, reset, DNS: the request may go through later
                problem = f"{method} {path}: {type(exc).__name__}: {exc}"
            else:
                if response.ok:
                    try:
                        return response.json()
                    except ValueError:
                        problem = f"{method} {path}: HTTP {response.status_code} with a body that is not JSON"
                elif response.status_code == 405:
                    return _METHOD_NOT_ALLOWED
                elif response.status_code in TRANSIENT_HTTP:
                    problem = f"{method} {path}: HTTP {response.status_code}"
                    retry_after = response.headers.get("Retry-After")
                elif response.status_code in (401, 403):
                    raise FatalError(f"{self.base} refused the API key (HTTP {response.status_code}): "
                                     "check RUNPOD_API_KEY")
                elif response.status_code == 404 and path.startswith("/status/"):
                    raise JobLost(path)
                elif response.status_code == 404:
                    raise FatalError(f"{self.base}{path}: HTTP 404, no such endpoint (check --endpoint-id or "
                                     "--base-url)")
                elif response.status_code == 413:
                    raise JobFailure("payload_too_large", "the endpoint refused the job's size (HTTP 413)",
                                     "permanent")
                else:
                    raise JobFailure(f"http_{response.status_code}",
                                     f"{method} {path}: {response.text[:300]}", "permanent")
            if attempt >= self.retries:
                raise JobFailure("unreachable", f"{problem} (gave up after {attempt + 1} tries)", "deferred")
            if self.stop.wait(backoff_delay(attempt, retry_after)):
                raise Stopped
            attempt += 1


# ------------------------------------------------------------------ output folder

def write_atomically(path: Path, text: str) -> None:
    """Readers (and a resumed run) see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class OutputStore:
    """The output folder: `<rel>.md` and `<rel>.json` per finished document (the JSON written last, so
    its presence marks a finished document), and the resume state in `.ocr-bulk/`: `jobs/` (submitted,
    not yet finished job ids), `parts/` (finished parts of split documents), `failed/`, `submitted.jsonl`
    (every job this folder ever submitted)."""

    def __init__(self, root: Path, options: JobOptions, endpoint: str):
        self.root = root
        self.state = root / STATE_DIR
        # Saved parts made with other job options, and jobs journaled at another endpoint, are ignored.
        self.options = {"mode": options.mode, "task": options.task, "dpi": options.dpi,
                        "max_tokens": options.max_tokens}
        self.endpoint = endpoint
        self._log_lock = threading.Lock()

    def markdown_path(self, rel: str) -> Path:
        return self.root / f"{rel}.md"

    def json_path(self, rel: str) -> Path:
        return self.root / f"{rel}.json"

    def is_complete(self, rel: str) -> bool:
        # Both files are written atomically, the JSON last: its presence is enough, no need to parse it.
        return self.json_path(rel).is_file() and self.markdown_path(rel).is_file()

    def failure(self, rel: str) -> JobFailure | None:
        record = self._read(self._failure_path(rel))
        if record is None:
            return None
        return JobFailure(record["code"], record["message"], record["kind"], record.get("job_id"))

    def save_document(self, document: Document, result: dict[str, Any], parts: list[Part]) -> None:
        text = result.get("markdown") if result.get("markdown") is not None else result.get("text", "")
        write_atomically(self.markdown_path(document.rel), text)
        write_atomically(self.json_path(document.rel), json.dumps(result, ensure_ascii=False, indent=1))
        for part in parts:
            self._remove(self._part_path(part))
            self._remove(self._job_path(part))
        self._remove(self._failure_path(document.rel))

    def save_failure(self, document: Document, failure: JobFailure, pages: str) -> None:
        write_atomically(self._failure_path(document.rel),
                         json.dumps({**failure.to_json(), "pages": pages}))

    def part_output(self, part: Part) -> dict[str, Any] | None:
        record = self._read(self._part_path(part))
        return record["output"] if record and record.get("options") == self.options else None

    def save_part(self, part: Part, output: dict[str, Any], job_id: str) -> None:
        write_atomically(self._part_path(part), json.dumps({"options": self.options, "job_id": job_id,
                                                            "output": output}, ensure_ascii=False))
        self._remove(self._job_path(part))

    def journaled_job(self, part: Part) -> tuple[str, float] | None:
        record = self._read(self._job_path(part))
        if record and record.get("options") == self.options and record.get("endpoint") == self.endpoint:
            return record["job_id"], record["submitted_at"]
        return None

    def journal_job(self, part: Part, job_id: str, submitted_at: float) -> None:
        write_atomically(self._job_path(part), json.dumps({"options": self.options, "endpoint": self.endpoint,
                                                           "job_id": job_id, "submitted_at": submitted_at}))
        line = json.dumps({"time": submitted_at, "document": part.document.rel, "part": part.key, "job_id": job_id})
        with self._log_lock, (self.state / "submitted.jsonl").open("a", encoding="utf-8") as log:
            log.write(line + "\n")

    def forget_job(self, part: Part) -> None:
        self._remove(self._job_path(part))

    def _part_path(self, part: Part) -> Path:
        return self.state / "parts" / f"{_flat(part.document.rel)}.{part.key}.json"

    def _job_path(self, part: Part) -> Path:
        return self.state / "jobs" / f"{_flat(part.document.rel)}.{part.key}.json"

    def _failure_path(self, rel: str) -> Path:
        return self.state / "failed" / f"{_flat(rel)}.json"

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # edited by hand or damaged: treated as absent, the work is done again
            return None

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _flat(rel: str) -> str:
    """One file name per document: the state folders stay flat, so no thread ever removes a folder another
    is writing into. Long paths keep a hash and their end (file names stop at 255 bytes)."""
    name = urllib.parse.quote(rel, safe="")
    if len(name) > 180:
        name = hashlib.sha256(rel.encode()).hexdigest()[:16] + "-" + name[-120:]
    return name


# ------------------------------------------------------------------ progress

class Progress:
    """One status line on stderr: documents, pages, pages/s, ETA, failed. Redrawn in place on a terminal,
    a plain line every PROGRESS_LINE_EVERY_S seconds otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, docs_total: int, pages_total: int, docs_done: int = 0):
        self.stream = stream
        self.tty = stream.isatty()
        self.docs_total, self.pages_total, self.docs_done = docs_total, pages_total, docs_done
        self.pages_done = self.failed = 0
        self.started = time.monotonic()
        self._last_drawn = 0.0
        self._lock = threading.Lock()

    def add(self, *, pages: int = 0, docs: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.pages_done += pages
            self.docs_done += docs
            self.failed += failed
        self.draw()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.pages_done / elapsed
        left = self.pages_total - self.pages_done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 and left > 0 else "--:--:--"
        return (f"docs {self.docs_done}/{self.docs_total} | pages {self.pages_done}/{self.pages_total} | "
                f"{rate:.2f} pages/s | ETA {eta} | failed {self.failed}")

    def draw(self, final: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            every = 0.2 if self.tty else PROGRESS_LINE_EVERY_S
            if not final and now - self._last_drawn < every:
                return
            self._last_drawn = now
            if self.tty:
                self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def say(self, message: str) -> None:
        with self._lock:
            self.stream.write(("\r\x1b[2K" if self.tty else "") + message + "\n")
            self.stream.flush()


# ------------------------------------------------------------------ the run

@dataclass
class DocumentState:
    document: Document
    parts: list[Part]
    results: dict[str, tuple[Part, dict[str, Any]]] = field(default_factory=dict)
    failures: list[tuple[Part, JobFailure]] = field(default_factory=list)
    left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Summary:
    submitted: int = 0
    completed: int = 0
    skipped: int = 0
    failed: dict[str, JobFailure] = field(default_factory=dict)
    interrupted: bool = False
    fatal: str | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 2
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = DEFAULT_CONCURRENCY
    max_pages: int = DEFAULT_MAX_PAGES_PER_JOB
    max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES
    poll_interval: float = DEFAULT_POLL_INTERVAL_S
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    retry_failed: bool = False


class BulkRun:
    """Plans documents into parts on the calling thread and runs the parts on `concurrency` threads, each
    holding at most one job: submit (or pick up a journaled one), poll, save, and, with a document's
    last part, join and write the document."""

    def __init__(self, endpoint: Endpoint, store: OutputStore, options: JobOptions, settings: RunSettings,
                 stop: threading.Event, stream: TextIO = sys.stderr):
        self.endpoint, self.store, self.options, self.settings = endpoint, store, options, settings
        self.stop = stop
        self.stream = stream
        self.summary = Summary()
        self._queue: queue.Queue[Part | None] = queue.Queue(maxsize=settings.concurrency)
        self._states: dict[str, DocumentState] = {}
        self._summary_lock = threading.Lock()
        self.progress: Progress | None = None

    def run(self, found: list[tuple[Path, str]]) -> Summary:
        todo = []
        for path, rel in found:
            if self.store.is_complete(rel):
                self.summary.skipped += 1
                continue
            failure = self.store.failure(rel)
            if failure and failure.kind == "permanent" and not self.settings.retry_failed:
                self.summary.failed[rel] = failure  # reported again, not submitted again
            else:
                try:
                    todo.append(describe_document(path, rel))  # counts a PDF's pages for the progress line
                except OSError as exc:  # vanished or unreadable since it was listed
                    self.summary.failed[rel] = JobFailure("unreadable_file", str(exc), "permanent")
        self.progress = Progress(self.stream, len(found), sum(d.pages for d in todo),
                                 docs_done=self.summary.skipped + len(self.summary.failed))
        self.progress.failed = len(self.summary.failed)
        if self.summary.skipped or self.summary.failed:
            self.progress.say(f"resuming: {self.summary.skipped} document(s) already done, "
                              f"{len(self.summary.failed)} failed before (--retry-failed submits them again)")
        threads = [threading.Thread(target=self._work, name=f"ocr-bulk-{i}", daemon=True)
                   for i in range(self.settings.concurrency)]
        for thread in threads:
            thread.start()
        try:
            self._feed(todo)
            self._join(threads)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self.stop.set()
            self.progress.say("interrupted: finishing the requests in flight, saving what they return "
                              "(Ctrl-C again quits at once; a run started again resumes)")
            self._join(threads)
        self.progress.draw(final=True)
        if self.stop.is_set() and not self.summary.fatal:
            self.summary.interrupted = True
        return self.summary

    def _feed(self, documents: list[Document]) -> None:
        for document in documents:
            if self.stop.is_set():
                break
            try:
                parts = plan_parts(document, self.options, max_pages=self.settings.max_pages,
                                   max_payload=self.settings.max_payload)
            except JobFailure as failure:
                self._finish_document(DocumentState(document, []), failure=failure)
                continue
            except (OSError, pdfium.PdfiumError) as exc:
                self._finish_document(DocumentState(document, []),
                                      failure=JobFailure("unreadable_file", str(exc), "permanent"))
                continue
            state = DocumentState(document, parts, left=len(parts))
            self._states[document.rel] = state
            for part in parts:
                saved = self.store.part_output(part)
                if saved is not None:
                    self._finish_part(part, output=saved)
                else:
                    self._put(part)
        for _ in range(self.settings.concurrency):
            self._put(None)

    def _put(self, item: Part | None) -> None:
        while not self.stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _join(self, threads: list[threading.Thread]) -> None:
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.2)
            self.progress.draw()

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    part = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if part is None:
                    return
                self._run_part(part)
        finally:
            self.endpoint.close()

    def _run_part(self, part: Part) -> None:
        try:
            output = self._complete(part)
        except Stopped:
            return
        except JobFailure as failure:
            self._finish_part(part, failure=failure)
        except (OSError, pdfium.PdfiumError) as exc:  # the file changed or vanished since it was planned
            self._finish_part(part, failure=JobFailure("unreadable_file", str(exc), "permanent"))
        except FatalError as exc:
            self.summary.fatal = str(exc)
            self.stop.set()
        except Exception as exc:  # noqa: BLE001 - a client bug must fail one document, not hang the run
            self._finish_part(part, failure=JobFailure("client_error", f"{type(exc).__name__}: {exc}", "deferred"))
        else:
            if output is not None:
                self._finish_part(part, output=output)

    def _complete(self, part: Part) -> dict[str, Any] | None:
        """Submit (or resume) the part's job and wait for it; retry transient failures. None: stopped."""
        journaled = self.store.journaled_job(part)
        attempt = 0
        while True:
            if journaled is None:
                if self.stop.is_set():
                    return None
                job_input = self.options.job_input(part.document.kind, part.payload())
                job_id = self.endpoint.submit(job_input)
                submitted_at = time.time()
                self.store.journal_job(part, job_id, submitted_at)
                with self._summary_lock:
                    self.summary.submitted += 1
            else:
                job_id, submitted_at = journaled
            journaled = None
            try:
                answer = self._wait(job_id, submitted_at + self.settings.timeout)
                if answer is None:
                    return None  # stopped: the job stays journaled for the next run
                output = document_result(outcome_of(answer, job_id))
                if "output_url" in output:
                    output = self._fetch_uploaded(output["output_url"], job_id)
                self.store.save_part(part, output, job_id)
                return output
            except JobLost:
                failure = JobFailure("lost", f"the server no longer knows job {job_id}", "transient", job_id)
            except JobFailure as exc:
                failure = exc
                failure.job_id = failure.job_id or job_id
            self.store.forget_job(part)
            if failure.kind != "transient" or attempt >= self.settings.retries:
                raise failure
            if self.stop.wait(backoff_delay(attempt)):
                return None
            attempt += 1

    def _wait(self, job_id: str, deadline: float) -> dict[str, Any] | None:
        while not self.stop.is_set():
            left = deadline - time.time()
            if left > 0:
                try:
                    answer = self.endpoint.status(job_id, read_timeout=left)
                except requests.ReadTimeout:
                    left = 0
                else:
                    if answer.get("status") in TERMINAL:
                        return answer
            if left <= 0:
                self.endpoint.cancel(job_id)
                raise JobFailure("client_timeout", f"no result within --timeout ({self.settings.timeout:.0f} s)",
                                 "transient", job_id)
            if self.stop.wait(self.settings.poll_interval):
                return None
        return None

    def _fetch_uploaded(self, url: str, job_id: str) -> dict[str, Any]:
        """A result too large for RunPod, uploaded by the worker: a presigned URL, fetched without the
        API key (it must not leave for the storage host)."""
        for attempt in range(self.settings.retries + 1):
            try:
                response = requests.get(url, timeout=(10, 300))
                if response.ok:
                    return document_result(response.json())
                problem = f"HTTP {response.status_code}"
                if response.status_code not in TRANSIENT_HTTP:
                    break
            except (requests.RequestException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if self.stop.wait(backoff_delay(attempt)):
                raise Stopped
        raise JobFailure("result_fetch_failed", f"the uploaded result could not be read ({problem})", "deferred",
                         job_id)

    def _finish_part(self, part: Part, *, output: dict[str, Any] | None = None,
                     failure: JobFailure | None = None) -> None:
        state = self._states[part.document.rel]
        with state.lock:
            if failure is None:
                state.results[part.key] = (part, output)
            else:
                state.failures.append((part, failure))
            state.left -= 1
            last = state.left == 0
        self.progress.add(pages=part.pages)
        if last:
            self._finish_document(state)

    def _finish_document(self, state: DocumentState, failure: JobFailure | None = None) -> None:
        document = state.document
        if failure is None and state.failures:
            # The document fails with its first part's failure; the other parts stay saved for a resume.
            part, failure = min(state.failures, key=lambda item: item[0].first)
            pages = "all" if part.whole else f"{part.first}-{part.last}"
        else:
            pages = "all"
        try:
            if failure is None:
                result = join_parts(list(state.results.values()))
                self.store.save_document(document, result, state.parts)
            else:
                self.store.save_failure(document, failure, pages)
        except OSError as exc:
            failure = JobFailure("write_failed", f"{self.store.root}: {exc}", "deferred")
        self._states.pop(document.rel, None)  # its results are on disk now; a million would not fit in memory
        with self._summary_lock:
            if failure is None:
                self.summary.completed += 1
            else:
                self.summary.failed[document.rel] = failure
        self.progress.add(docs=1, failed=int(failure is not None), pages=0 if state.parts else document.pages)


# ------------------------------------------------------------------ command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ocr-bulk", description="OCR many PDFs and images through a DeepSeek-OCR RunPod endpoint (or any base "
        "URL, such as `python -m worker --rp_serve_api`): one .md and one .json per document in --out.",
        epilog="The API key comes from RUNPOD_API_KEY. Exit status: 0 all documents done, 1 some failed, "
               "2 usage or a fatal endpoint error, 130 interrupted (run again to resume).")
    parser.add_argument("inputs", nargs="+", help="folders, globs (quote them), PDF/image files, or list files "
                        "(one path per line)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint-id", help="a RunPod endpoint id: https://api.runpod.ai/v2/<id>")
    target.add_argument("--base-url", help="any base URL with /run and /status, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also holds the resume state)")
    parser.add_argument("--mode", choices=MODES, default="gundam")
    parser.add_argument("--task", choices=TASKS, default="markdown")
    parser.add_argument("--dpi", type=int, help="PDF render resolution (the endpoint's PDF_DPI if unset)")
    parser.add_argument("--max-tokens", type=int, help="generated tokens per page (the endpoint's MAX_TOKENS if unset)")
    parser.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                        help="jobs in flight at once (default %(default)s); about twice the endpoint's max workers")
    parser.add_argument("--max-pages-per-job", type=_positive_int, default=DEFAULT_MAX_PAGES_PER_JOB,
                        help="split PDFs into jobs of at most this many pages (default %(default)s)")
    parser.add_argument("--max-payload-bytes", type=_positive_int, default=DEFAULT_MAX_PAYLOAD_BYTES,
                        help="largest /run body; larger PDFs are split further (default %(default)s)")
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S,
                        help="seconds between /status polls of one job (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a job may take from submission, queue included, before it is cancelled "
                             "and submitted again (default %(default)s)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help="retries of a transient failure, with exponential back-off (default %(default)s)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="submit again documents an earlier run recorded as permanently failed")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def report(summary: Summary, store: OutputStore, stream: TextIO) -> None:
    stream.write(f"{summary.completed} document(s) done, {summary.skipped} done before, {len(summary.failed)} "
                 f"failed; {summary.submitted} job(s) submitted; outputs in {store.root}\n")
    for rel, failure in sorted(summary.failed.items()):
        job = f" (job {failure.job_id})" if failure.job_id else ""
        later = {"permanent": "", "deferred": " [a run started again retries it]",
                 "transient": " [retries exhausted; a run started again retries it]"}[failure.kind]
        stream.write(f"  FAILED {rel}: {failure.code}: {failure.message}{job}{later}\n")
    if summary.fatal:
        stream.write(f"stopped: {summary.fatal}\n")
    elif summary.interrupted:
        stream.write("interrupted: run the same command again to resume\n")
    write_atomically(store.state / "last-run.json", json.dumps({
        "submitted": summary.submitted, "completed": summary.completed, "skipped": summary.skipped,
        "failed": {rel: f.to_json() for rel, f in summary.failed.items()}, "interrupted": summary.interrupted,
        "fatal": summary.fatal}, indent=1))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler stopping the client) drains like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = os.environ.get("RUNPOD_API_KEY")
    if args.endpoint_id and not api_key:
        print("ocr-bulk: set RUNPOD_API_KEY to call a RunPod endpoint", file=sys.stderr)
        return 2
    base = args.base_url or f"{CLOUD_BASE}/{args.endpoint_id}"
    try:
        documents = find_documents(args.inputs)
    except (ValueError, OSError) as exc:
        print(f"ocr-bulk: {exc}", file=sys.stderr)
        return 2
    if not documents:
        print("ocr-bulk: no PDFs or images found", file=sys.stderr)
        return 2
    options = JobOptions(mode=args.mode, task=args.task, dpi=args.dpi, max_tokens=args.max_tokens)
    store = OutputStore(args.out, options, base)
    settings = RunSettings(concurrency=args.concurrency, max_pages=args.max_pages_per_job,
                           max_payload=args.max_payload_bytes, poll_interval=args.poll_interval,
                           timeout=args.timeout, retries=args.retries, retry_failed=args.retry_failed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)
    endpoint = Endpoint(base, api_key, retries=args.retries, stop=stop)
    try:
        summary = BulkRun(endpoint, store, options, settings, stop).run(documents)
    except KeyboardInterrupt:  # the second Ctrl-C: quit now; journaled jobs are picked up by the next run
        print("\nocr-bulk: quit", file=sys.stderr)
        return 130
    report(summary, store, sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
