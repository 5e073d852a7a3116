"""HTTP statuses for the worker's stable error codes, shared by every route of the local server.

In: an exception. Out: a status. Bad input is 400, anything too large 413, a request the HTTP layer
cannot read (the server's own validation) or a document with too many failed pages 422, a worker
that cannot take work now 503, and every other failure 500. A code this table does not know is a
server fault (500), never the caller's.
"""

from __future__ import annotations

from ..errors import EngineDead, WorkerError, WorkerShuttingDown

BAD_REQUEST = 400
TOO_LARGE = 413
UNPROCESSABLE = 422
SERVER_ERROR = 500
UNAVAILABLE = 503

_STATUS_BY_CODE = {
    "invalid_input": BAD_REQUEST,
    "invalid_image": BAD_REQUEST,
    "unsupported_content": BAD_REQUEST,
    "invalid_pdf": BAD_REQUEST,
    "pdf_password_required": BAD_REQUEST,
    "pdf_password_incorrect": BAD_REQUEST,
    "too_many_pages": BAD_REQUEST,
    "mode_unavailable": BAD_REQUEST,
    # The caller named the URL: one that cannot be fetched is theirs to fix, not a server fault
    # (and a 5xx would make OpenAI's clients retry it).
    "url_not_allowed": BAD_REQUEST,
    "url_fetch_failed": BAD_REQUEST,
    "url_timeout": BAD_REQUEST,
    "url_too_many_redirects": BAD_REQUEST,
    "payload_too_large": TOO_LARGE,
    "image_too_large": TOO_LARGE,
    "url_too_large": TOO_LARGE,
    "pixel_budget_exceeded": TOO_LARGE,
    # The document was read but too many of its pages could not be (bad images, model failures).
    "too_many_failed_pages": UNPROCESSABLE,
    "worker_shutting_down": UNAVAILABLE,
}


def http_status(exc: BaseException) -> int:
    # A dead engine reports `model_error` like a failed page, but no later request can succeed.
    if isinstance(exc, (EngineDead, WorkerShuttingDown)):
        return UNAVAILABLE
    if isinstance(exc, WorkerError):
        return _STATUS_BY_CODE.get(exc.code, SERVER_ERROR)
    return SERVER_ERROR
