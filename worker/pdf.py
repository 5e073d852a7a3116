"""PDF bytes -> page images, with pypdfium2 (Apache/BSD; PyMuPDF's AGPL does not fit).

In: PDF bytes, password, page selection, dpi. Out: the page count (checked up front) and an iterator
of `(page_number, image | WorkerError)`; a page that fails to render becomes an error value so the
document survives. pdfium is not thread-safe: one thread opens, renders and closes a document.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from .errors import (ImageTooLarge, InvalidInput, InvalidPdf, PdfPasswordIncorrect, PdfPasswordRequired,
                     TooManyPages, WorkerError)

POINTS_PER_INCH = 72


@contextmanager
def open_pdf(data: bytes, *, password: str | None, field: str = "pdf") -> Iterator[pdfium.PdfDocument]:
    try:
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
        document.close()


def select_pages(page_count: int, selection: tuple[int, ...] | None, *, max_pages: int) -> list[int]:
    """1-based page numbers to render; out-of-range or too many is an error, never a truncation."""
    pages = list(selection) if selection is not None else list(range(1, page_count + 1))
    beyond = [p for p in pages if p > page_count]
    if beyond:
        raise InvalidInput(f"page {beyond[0]} does not exist; the PDF has {page_count} pages", field="pages")
    if len(pages) > max_pages:
        raise TooManyPages(f"{len(pages)} pages selected, over the limit of {max_pages} (MAX_PAGES); "
                           "use 'pages' to split the document", field="pages" if selection else "pdf")
    return pages


def render_page(document: pdfium.PdfDocument, number: int, *, dpi: int, max_pixels: int) -> Image.Image:
    """Render one 1-based page to RGB at `dpi`. Raises a WorkerError for this page only."""
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
