"""PDF bytes -> page images, with pypdfium2 (Apache/BSD; PyMuPDF's AGPL does not fit).

In: PDF bytes, password, dpi. Out: an open document (`open_pdf`), its page count (`page_count`) and
one rendered page at a time (`render_page`, raising a WorkerError for that page only, so the caller
can flag it and keep the document). PDFium is not thread-safe and jobs render on worker threads, so
every PDFium call of the process goes through `PDFIUM_LOCK`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from .errors import ImageTooLarge, InvalidPdf, PdfPasswordIncorrect, PdfPasswordRequired, WorkerError

POINTS_PER_INCH = 72
PDFIUM_LOCK = threading.RLock()


@contextmanager
def open_pdf(data: bytes, *, password: str | None, field: str = "pdf") -> Iterator[pdfium.PdfDocument]:
    try:
        with PDFIUM_LOCK:
            document = pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as exc:
        # PDFium's last-error value is process state: a document it refuses without setting one
        # (an empty page tree) reports whatever the previous failure was. So a password error is
        # believed only for a file that declares encryption, and nothing else is reported as cause.
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD and b"/Encrypt" in data:
            if password is None:
                raise PdfPasswordRequired("the PDF is encrypted; send its password in 'pdf_password'",
                                          field=field) from None
            raise PdfPasswordIncorrect("the password does not open this PDF", field="pdf_password") from None
        raise InvalidPdf("could not be opened: the PDF is damaged, empty or has no pages", field=field) from None
    try:
        yield document
    finally:
        with PDFIUM_LOCK:
            document.close()


def page_count(document: pdfium.PdfDocument) -> int:
    with PDFIUM_LOCK:
        return len(document)


def render_page(document: pdfium.PdfDocument, number: int, *, dpi: int, max_pixels: int) -> Image.Image:
    """Render one 1-based page to RGB at `dpi`. Raises a WorkerError for this page only."""
    with PDFIUM_LOCK:
        return _render_page(document, number, dpi=dpi, max_pixels=max_pixels)


def _render_page(document: pdfium.PdfDocument, number: int, *, dpi: int, max_pixels: int) -> Image.Image:
    scale = dpi / POINTS_PER_INCH
    try:
        page = document[number - 1]
        try:
            width, height = page.get_size()
            pixels = round(width * scale) * round(height * scale)
            if pixels > max_pixels:
                raise ImageTooLarge(f"page {number} at {dpi} dpi would be {pixels} pixels, over "
                                    f"MAX_IMAGE_PIXELS ({max_pixels}); lower 'dpi'", field="dpi")
            bitmap = page.render(scale=scale)
            try:
                image = bitmap.to_pil().convert("RGB")
            finally:
                bitmap.close()
        finally:
            page.close()
    except WorkerError:
        raise
    except (pdfium.PdfiumError, ValueError, OSError) as exc:
        raise InvalidPdf(f"page {number} could not be rendered ({exc})", field="pdf") from None
    return image
