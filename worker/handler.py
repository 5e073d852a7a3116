"""RunPod handlers: job dict in, output dict (or a stream of dicts) out.

`Handler.__call__` returns the whole result (the local test harness, and endpoints without
streaming). `Handler.stream` yields each page as it is ready, then a closing `document` item
without the pages; RunPod aggregates the items for /run and /runsync. Both catch everything: a bad
job returns the one error shape and the worker goes on to the next job.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

from .errors import WorkerError, error_output
from .pipeline import Pipeline
from .schema import parse_job_input
from .settings import Settings
from .storage import fit_output

log = logging.getLogger(__name__)


class Handler:
    def __init__(self, pipeline: Pipeline, settings: Settings):
        self.pipeline = pipeline
        self.settings = settings

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id", ""))
        try:
            request = parse_job_input(job.get("input"), self.settings)
            output = self.pipeline.run_document(request, job_id).to_output()
            return fit_output(output, job_id=job_id, settings=self.settings)
        except Exception as exc:  # the handler must never crash the worker loop
            return _failure(exc, job_id)

    def stream(self, job: dict[str, Any]) -> Iterator[dict[str, Any]]:
        job_id = str(job.get("id", ""))
        try:
            started = time.perf_counter()
            request = parse_job_input(job.get("input"), self.settings)
            pages = []
            for page in self.pipeline.iter_page_results(request, job_id):
                pages.append(page)
                yield fit_output(page.to_output(), job_id=job_id, settings=self.settings, name=f"page-{page.page}")
            closing = self.pipeline.finish_document(pages, request, started, include_pages=False)
            yield fit_output(closing.to_output(), job_id=job_id, settings=self.settings)
        except Exception as exc:  # yielded, not raised: a raise would lose the error code
            yield _failure(exc, job_id)


def _failure(exc: Exception, job_id: str) -> dict[str, Any]:
    if isinstance(exc, WorkerError):
        log.info("job %s failed: %s", job_id, exc.describe())
    else:
        log.exception("job %s: internal error", job_id)
    return error_output(exc)
