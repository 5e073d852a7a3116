"""The worker's one error shape.

Every failure a caller can see is a `WorkerError` subclass with a stable `code`; `error_output`
is the single place that turns an exception into what the handler returns. RunPod marks a job
FAILED when the returned dict has a top-level `error`; its local API wants that value to be a
string (a dict there gives HTTP 500 with runpod 1.12), so the code leads the string
("invalid_input: ...") and the structured form rides beside it in `error_detail`.
"""

from __future__ import annotations

from typing import Any


# Errors echo what the caller sent (a field name, a page range); an unknown field with a 1 MB name
# must not come back as a 1 MB error string, nor fill the logs.
MAX_ECHO_CHARS = 200
MAX_MESSAGE_CHARS = 2000


def bounded(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class WorkerError(Exception):
    """Base of every error with a stable code. `field` names the input field at fault, if any."""

    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None):
        message = bounded(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.field = bounded(field) if field is not None else None

    def describe(self) -> str:
        where = f"field '{self.field}': " if self.field else ""
        return f"{self.code}: {where}{self.message}"


class InvalidInput(WorkerError):
    code = "invalid_input"


class InvalidImage(WorkerError):
    code = "invalid_image"


class ImageTooLarge(WorkerError):
    code = "image_too_large"


class PayloadTooLarge(WorkerError):
    code = "payload_too_large"


class TooManyPages(WorkerError):
    code = "too_many_pages"


class InvalidPdf(WorkerError):
    code = "invalid_pdf"


class PdfPasswordRequired(WorkerError):
    code = "pdf_password_required"


class PdfPasswordIncorrect(WorkerError):
    code = "pdf_password_incorrect"


class UrlNotAllowed(WorkerError):
    code = "url_not_allowed"


class UrlFetchFailed(WorkerError):
    code = "url_fetch_failed"


class UrlTimeout(WorkerError):
    code = "url_timeout"


class UrlTooLarge(WorkerError):
    code = "url_too_large"


class UrlTooManyRedirects(WorkerError):
    code = "url_too_many_redirects"


class UnsupportedContent(WorkerError):
    code = "unsupported_content"


class ModelError(WorkerError):
    code = "model_error"


class OutOfMemory(ModelError):
    code = "out_of_memory"


class EngineDead(ModelError):
    """The engine can take no more work (a CUDA fault that poisoned the context, vLLM's engine core
    died): the job in flight fails with `model_error` and the worker asks RunPod to replace it."""


class ModeUnavailable(WorkerError):
    """A size mode this engine and model family cannot serve with the settings the result reports."""

    code = "mode_unavailable"


class PixelBudgetExceeded(WorkerError):
    """A job whose decoded pages together exceed MAX_JOB_PIXELS."""

    code = "pixel_budget_exceeded"


class WorkerShuttingDown(WorkerError):
    """The worker received SIGTERM (RunPod scaling down) before the job could finish."""

    code = "worker_shutting_down"


class TooManyFailedPages(WorkerError):
    code = "too_many_failed_pages"


class OutputTooLarge(WorkerError):
    code = "output_too_large"


class UploadFailed(WorkerError):
    code = "upload_failed"


class ConfigError(Exception):
    """Invalid settings or missing weights at start-up: the worker must not take jobs."""


def error_detail(exc: BaseException) -> dict[str, Any]:
    """The structured form of an error, also used for per-page errors inside a document."""
    if isinstance(exc, WorkerError):
        return {"code": exc.code, "message": exc.message, "field": exc.field}
    # Internal failures: say what happened, never the traceback (that goes to the log).
    return {"code": WorkerError.code, "message": f"internal error ({type(exc).__name__})", "field": None}


def error_output(exc: BaseException) -> dict[str, Any]:
    """What a handler returns for a failed job: RunPod's `error` string plus `error_detail`."""
    detail = error_detail(exc)
    text = exc.describe() if isinstance(exc, WorkerError) else f"{detail['code']}: {detail['message']}"
    return {"error": text, "error_detail": detail}
