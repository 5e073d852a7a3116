"""Validated request -> decoded pages, in job order.

In: an `OcrRequest`. Out: an iterator of `DecodedPage` (an RGB image, or the error that page
got). Job-level problems (a PDF that will not open, a refused URL for the document, a payload or
page-count limit) raise; a single bad image of several, or a page that will not render, becomes a
failed page so the rest of the document is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from .decoding import check_showable, decode_base64, decode_image, sniff_kind
from .errors import PayloadTooLarge, UnsupportedContent, WorkerError
from .fetch import fetch_url
from .page_selection import select_pages
from .pdf import open_pdf, page_count, render_page
from .schema import OcrRequest, SourceRef
from .settings import Settings


@dataclass(frozen=True, eq=False)
class DecodedPage:
    number: int  # 1-based position in the job's output
    source: str
    image: Image.Image | None
    failure: WorkerError | None
    decode_s: float


class _ByteBudget:
    """MAX_INPUT_BYTES over all files of a job, inline and downloaded."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    @property
    def left(self) -> int:
        return self.limit - self.used

    def spend(self, n: int, field: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise self.exceeded(field)

    def exceeded(self, field: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"the job's files exceed MAX_INPUT_BYTES ({self.limit} bytes)", field=field)


def iter_pages(request: OcrRequest, settings: Settings) -> Iterator[DecodedPage]:
    budget = _ByteBudget(settings.max_input_bytes)
    if request.sources[0].expect == "pdf":
        yield from _pdf_pages(request, settings, budget)
        return
    for number, ref in enumerate(request.sources, 1):
        started = time.perf_counter()
        try:
            data = load_bytes(ref, settings, budget)
            image = decode_image(data, field=ref.field, max_pixels=settings.max_image_pixels)
        except PayloadTooLarge:
            raise
        except WorkerError as exc:
            yield DecodedPage(number, ref.field, None, exc, time.perf_counter() - started)
        else:
            yield DecodedPage(number, ref.field, image, None, time.perf_counter() - started)


def load_bytes(ref: SourceRef, settings: Settings, budget: _ByteBudget) -> bytes:
    if ref.is_url:
        fetched = fetch_url(ref.value, field=ref.field, settings=settings,
                            max_bytes=min(settings.url_max_bytes, max(budget.left, 0)))
        data = fetched.data
        if sniff_kind(data) is None:  # the bytes decide, but the server's claim makes a better message
            raise UnsupportedContent(f"the URL returned {fetched.content_type or 'unlabelled data'}, which is "
                                     "not a supported image or PDF", field=ref.field)
    else:
        try:
            data = decode_base64(ref.value, field=ref.field, max_bytes=max(budget.left, 0))
        except PayloadTooLarge:
            raise budget.exceeded(ref.field) from None
    budget.spend(len(data), ref.field)
    return data


def _pdf_pages(request: OcrRequest, settings: Settings, budget: _ByteBudget) -> Iterator[DecodedPage]:
    ref = request.sources[0]
    started = time.perf_counter()
    data = load_bytes(ref, settings, budget)
    kind = sniff_kind(data)
    if kind != "pdf":
        what = f"a {kind.upper()} image; send it in 'image'" if kind else "not a PDF"
        raise UnsupportedContent(f"is {what}", field=ref.field)
    with open_pdf(data, password=request.pdf_password, field=ref.field) as document:
        numbers = select_pages(page_count(document), request.page_selection, max_pages=settings.max_pages)
        for position, number in enumerate(numbers, 1):
            source = f"{ref.field}#{number}"
            try:
                image = check_showable(render_page(document, number, dpi=request.dpi,
                                                   max_pixels=settings.max_image_pixels), field=source)
            except WorkerError as exc:
                yield DecodedPage(position, source, None, exc, time.perf_counter() - started)
            else:
                yield DecodedPage(position, source, image, None, time.perf_counter() - started)
            started = time.perf_counter()
