"""One job's pages through the engine: the one place that knows the stages' order.

In: an `OcrRequest`. Out: `PageResult`s in page order (`iter_page_results`), or one
`DocumentResult` (`run_document`). Decoding and PDF rendering run on a producer thread, a bounded
queue ahead of the engine, so the next pages are ready while the GPU works on the current batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Callable, Iterator

from .engine import Engine
from .errors import ModelError, TooManyFailedPages, WorkerError, error_detail
from .pages import Generation, PageInput
from .results import DocumentResult, Issue, ModelMeta, PageResult, PageTimings, build_document_result, \
    build_page_result
from .schema import GuardConfig, OcrRequest
from .settings import Settings
from .sources import DecodedPage, iter_pages

log = logging.getLogger(__name__)
_DONE = object()


class Pipeline:
    def __init__(self, engine: Engine, settings: Settings, model: ModelMeta):
        self.engine = engine
        self.settings = settings
        self.model = model

    def run_document(self, request: OcrRequest, job_id: str = "") -> DocumentResult:
        started = time.perf_counter()
        return self.finish_document(list(self.iter_page_results(request, job_id)), request, started)

    def finish_document(self, pages: list[PageResult], request: OcrRequest, started: float,
                        include_pages: bool = True) -> DocumentResult:
        """The document over its page results, or the job's error when too many pages failed."""
        check_failures(pages, self.settings.max_failed_page_ratio)
        return build_document_result(pages, request=request, model=self.model,
                                     total_s=time.perf_counter() - started, include_pages=include_pages)

    def iter_page_results(self, request: OcrRequest, job_id: str = "") -> Iterator[PageResult]:
        """Page results in order, a batch at a time. Job-level errors raise from here."""
        with _Prefetch(lambda: iter_pages(request, self.settings), depth=2 * self.settings.batch_size) as pages:
            batch: list[DecodedPage] = []
            for page in pages:
                batch.append(page)
                if sum(1 for p in batch if p.image is not None) >= self.settings.batch_size:
                    yield from self._run_batch(batch, request, job_id)
                    batch = []
            if batch:
                yield from self._run_batch(batch, request, job_id)

    def _run_batch(self, batch: list[DecodedPage], request: OcrRequest, job_id: str) -> list[PageResult]:
        runnable = [p for p in batch if p.image is not None]
        inputs = [PageInput(image=p.image, prompt=request.prompt, view=request.mode.view,
                            max_tokens=request.max_tokens, guard=request.guard) for p in runnable]
        generations = self._generate_isolating(inputs, job_id)
        retried = [False] * len(generations)
        retry_guard = self._retry_guard(request.guard)
        runaway = [i for i, g in enumerate(generations) if isinstance(g, Generation) and g.finish_reason == "length"]
        if runaway and retry_guard is not None:
            log.info("job %s: retrying %d runaway page(s) with n-gram guard %d/%d", job_id, len(runaway),
                     retry_guard.ngram_size, retry_guard.window)
            again = self._generate_isolating([replace(inputs[i], guard=retry_guard) for i in runaway], job_id)
            for i, generation in zip(runaway, again):
                if isinstance(generation, Generation):  # a retry that fails keeps the first answer
                    generations[i], retried[i] = generation, True
        by_page = {p.number: (g, r) for p, g, r in zip(runnable, generations, retried)}
        results = []
        for page in batch:
            generation, was_retried = by_page.get(page.number, (page.failure, False))
            if not isinstance(generation, Generation):
                results.append(_failed_page(page, generation, request))
                continue
            results.append(build_page_result(page=page.number, source=page.source, image=page.image,
                                             generation=generation, request=request,
                                             decode_s=page.decode_s, retried=was_retried))
        return results

    def _generate_isolating(self, inputs: list[PageInput], job_id: str) -> list[Generation | ModelError]:
        """One engine call for the batch; if it fails, each page alone, so one page the model cannot
        handle is flagged instead of failing every page it was batched with."""
        if not inputs:
            return []
        try:
            return list(self.engine.generate(inputs))
        except ModelError as exc:
            if len(inputs) == 1:
                return [exc]
            log.warning("job %s: batch of %d failed (%s); running its pages one by one", job_id, len(inputs),
                        exc.describe())
        results: list[Generation | ModelError] = []
        for page in inputs:
            try:
                results.append(self.engine.generate([page])[0])
            except ModelError as exc:
                results.append(exc)
        return results

    def _retry_guard(self, guard: GuardConfig) -> GuardConfig | None:
        """The stricter guard for a runaway page (the official PDF settings, 20 over 50), if retry
        is on and it is stricter than what already ran."""
        s = self.settings
        if not s.runaway_retry:
            return None
        stricter = GuardConfig(ngram_size=s.retry_ngram_size, window=s.retry_ngram_window)
        if guard.ngram_size and guard.ngram_size <= stricter.ngram_size:
            return None
        return stricter


def check_failures(pages: list[PageResult], max_ratio: float) -> None:
    """Fail the job when more than `max_ratio` of its pages failed. A one-page job fails with that
    page's own error, so a bad single image reports `invalid_image`, not a ratio."""
    failed = [p for p in pages if p.failure is not None]
    if not failed or len(failed) / len(pages) <= max_ratio:
        return
    if len(pages) == 1:
        f = failed[0].failure
        raise WorkerError(f.message, field=f.field, code=f.code)
    first = failed[0]
    raise TooManyFailedPages(
        f"{len(failed)} of {len(pages)} pages failed (MAX_FAILED_PAGE_RATIO={max_ratio}); first: page "
        f"{first.page} ({first.source}) {first.failure.code}: {first.failure.message}")


def _failed_page(page: DecodedPage, failure: BaseException, request: OcrRequest) -> PageResult:
    detail = error_detail(failure)
    return PageResult(page=page.number, source=page.source, finish_reason="failed",
                      failure=Issue(**detail), timings=PageTimings(decode_s=round(page.decode_s, 4)),
                      **{request.output_key: ""})


class _Prefetch:
    """Runs a page iterator on a producer thread, `depth` items ahead. Errors from the producer
    re-raise in the consumer; leaving the block early stops the producer."""

    def __init__(self, make_iter: Callable[[], Iterator[DecodedPage]], depth: int):
        self._make_iter = make_iter
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="page-prefetch", daemon=True)

    def __enter__(self) -> Iterator[DecodedPage]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)

    def _produce(self) -> None:
        try:
            for item in self._make_iter():
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer thread, which re-raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _consume(self) -> Iterator[DecodedPage]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
