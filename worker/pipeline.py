"""One job's pages through the shared engine: the one place that knows the stages' order.

In: an `OcrRequest` and a job id. Out: `PageResult`s in page order (`page_results`, an async
iterator) or one `DocumentResult` (`run_document`). Stages per page: decode (a worker thread; PDFium
is serialised in pdf.py) -> room in the worker-wide pixel budget -> `engine.generate` (the engine
batches pages of every job) -> a stricter retry for a runaway page -> `build_page_result`.

A job keeps at most `MAX_JOB_INFLIGHT_PAGES` pages in the engine at once, so a 100-page PDF cannot
fill the queue ahead of twenty one-page jobs; results are yielded in page order all the same.
Cancelling the consumer (RunPod cancels the job's task on cancel or time-out) cancels the job's
pages in the engine, which takes them out of its queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import AsyncIterator, Iterator

from .engine.api import Engine, Generation, GuardConfig, PageRequest
from .errors import EngineDead, ModelError, PixelBudgetExceeded, TooManyFailedPages, WorkerError, error_detail
from .results import DocumentResult, Issue, ModelMeta, PageResult, PageTimings, build_document_result, \
    build_page_result
from .schema import OcrRequest
from .settings import Settings
from .sources import DecodedPage, iter_pages

log = logging.getLogger(__name__)


class PixelBudget:
    """Decoded pixels in flight across every job of the worker (MAX_INFLIGHT_PIXELS). A page waits
    for room instead of failing, so a burst of huge scans slows down rather than running the worker
    out of memory. Loop-agnostic (a lock and per-waiter futures), since the RunPod handler, the web
    server and tests each bring their own event loop."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def used(self) -> int:
        return self._used

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(pixels, self.limit)  # one page never waits for more room than exists
        await self._acquire(pixels)
        try:
            yield
        finally:
            self._release(pixels)

    async def _acquire(self, pixels: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._used + pixels <= self.limit:
                self._used += pixels
                return
            waiter = loop.create_future()
            self._waiters.append((pixels, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                granted = waiter.done() and not waiter.cancelled()
                if (pixels, waiter) in self._waiters:
                    self._waiters.remove((pixels, waiter))
            if granted:
                self._release(pixels)
            raise

    def _release(self, pixels: int) -> None:
        with self._lock:
            self._used -= pixels
            # First come, first served: a large page at the head is not overtaken by small ones.
            while self._waiters and self._used + self._waiters[0][0] <= self.limit:
                size, waiter = self._waiters.popleft()
                self._used += size
                waiter.get_loop().call_soon_threadsafe(_grant, waiter)


def _grant(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(frozen=True)
class PageOutcome:
    """A page's result, and the typed error behind it when it failed (kept for the job's error)."""

    result: PageResult
    error: WorkerError | None = None


class Pipeline:
    def __init__(self, engine: Engine, settings: Settings, model: ModelMeta):
        self.engine = engine
        self.settings = settings
        self.model = model
        self.pixels = PixelBudget(settings.max_inflight_pixels)

    async def run_document(self, request: OcrRequest, job_id: str = "") -> DocumentResult:
        started = time.perf_counter()
        outcomes = [outcome async for outcome in self.page_outcomes(request, job_id)]
        return self.finish_document(outcomes, request, started)

    def finish_document(self, outcomes: list[PageOutcome], request: OcrRequest, started: float,
                        include_pages: bool = True) -> DocumentResult:
        """The document over its pages, or the job's error when too many pages failed."""
        check_failures(outcomes, self.settings.max_failed_page_ratio)
        return build_document_result([o.result for o in outcomes], request=request, model=self.model,
                                     total_s=time.perf_counter() - started, include_pages=include_pages)

    async def page_outcomes(self, request: OcrRequest, job_id: str = "") -> AsyncIterator[PageOutcome]:
        """Page outcomes in page order. Job-level errors (a PDF that will not open, a payload limit)
        raise from here; a page's own failure is a flagged outcome."""
        source = _PageSource(iter_pages(request, self.settings))
        inflight: deque[asyncio.Task] = deque()
        job_pixels = 0
        try:
            while True:
                while len(inflight) < self.settings.max_job_inflight_pages:
                    page = await source.next()
                    if page is None:
                        break
                    if page.image is not None:
                        job_pixels += page.image.width * page.image.height
                        if job_pixels > self.settings.max_job_pixels:
                            raise PixelBudgetExceeded(
                                f"the job's pages exceed MAX_JOB_PIXELS ({self.settings.max_job_pixels} pixels) "
                                f"at page {page.number}; send fewer or smaller pages, or a lower 'dpi'",
                                field=page.source.split("#")[0].split("[")[0])
                    inflight.append(asyncio.create_task(self._page_outcome(page, request, job_id)))
                if not inflight:
                    return
                yield await inflight[0]
                inflight.popleft()
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            await source.aclose()

    async def _page_outcome(self, page: DecodedPage, request: OcrRequest, job_id: str) -> PageOutcome:
        if page.image is None:
            return _failed(page, page.failure, request)
        async with self.pixels.hold(page.image.width * page.image.height):
            try:
                generation, retry_s = await self._generate_with_retry(page, request, job_id)
            except EngineDead:
                raise
            except ModelError as exc:
                log.warning("job %s: page %d failed: %s", job_id, page.number, exc.describe())
                return _failed(page, exc, request)
            result = await asyncio.to_thread(
                build_page_result, page=page.number, source=page.source, image=page.image, generation=generation,
                request=request, decode_s=page.decode_s, retry_s=retry_s)
        return PageOutcome(result)

    async def _generate_with_retry(self, page: DecodedPage, request: OcrRequest,
                                   job_id: str) -> tuple[Generation, float | None]:
        """The page's generation; a runaway (hit max_tokens) is run once more with the stricter
        guard, and the retry's answer is kept unless the retry itself fails."""
        first = PageRequest(image=page.image, prompt=request.prompt, view=request.mode.view,
                            max_tokens=request.max_tokens, guard=request.guard, job_id=job_id)
        generation = await self.engine.generate(first)
        guard = self._retry_guard(request.guard)
        if generation.finish_reason != "length" or guard is None:
            return generation, None
        log.info("job %s: page %d ran away; retrying with n-gram guard %d/%d", job_id, page.number,
                 guard.ngram_size, guard.window)
        try:
            again = await self.engine.generate(replace(first, guard=guard))
        except EngineDead:
            raise
        except ModelError as exc:
            log.warning("job %s: retry of page %d failed (%s); keeping the first answer", job_id, page.number,
                        exc.describe())
            return generation, None
        return again, again.generate_s

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


def check_failures(outcomes: list[PageOutcome], max_ratio: float) -> None:
    """Fail the job when more than `max_ratio` of its pages failed. A one-page job fails with that
    page's own typed error, so a bad single image reports `invalid_image`, not a ratio."""
    failed = [o for o in outcomes if o.error is not None]
    if not failed or len(failed) / len(outcomes) <= max_ratio:
        return
    if len(outcomes) == 1:
        raise failed[0].error
    first = failed[0].result
    raise TooManyFailedPages(
        f"{len(failed)} of {len(outcomes)} pages failed (MAX_FAILED_PAGE_RATIO={max_ratio}); first: page "
        f"{first.page} ({first.source}) {first.failure.code}: {first.failure.message}")


def _failed(page: DecodedPage, error: WorkerError, request: OcrRequest) -> PageOutcome:
    result = PageResult(page=page.number, source=page.source, finish_reason="failed",
                        failure=Issue(**error_detail(error)), timings=PageTimings(decode_s=round(page.decode_s, 4)),
                        **{request.output_key: ""})
    return PageOutcome(result, error)


class _PageSource:
    """A job's page iterator (decoding, downloads, PDF rendering: blocking work) stepped on worker
    threads, one step at a time, so the event loop never blocks and the generator is never
    entered by two threads at once (closing it while a step runs would raise)."""

    def __init__(self, pages: Iterator[DecodedPage]):
        self._pages = pages
        self._step: asyncio.Future | None = None

    async def next(self) -> DecodedPage | None:
        self._step = asyncio.ensure_future(asyncio.to_thread(next, self._pages, None))
        return await asyncio.shield(self._step)

    async def aclose(self) -> None:
        if self._step is not None and not self._step.done():
            await asyncio.gather(self._step, return_exceptions=True)
        await asyncio.to_thread(self._pages.close)
