"""The `pages` selector of a PDF job: '1-3,7' -> ranges, then -> page numbers once the PDF is open.

`parse_page_selection(spec)` is pure and runs with the rest of the job input: it bounds the
string and returns a `PageSelection`, a few (first, last) ranges, sorted and merged, whatever
span they cover. `select_pages(page_count, selection, max_pages=...)` checks those ranges against
the opened PDF and MAX_PAGES and only then hands out page numbers, one at a time. Nothing here
ever holds more than one number per range: the old parser expanded ranges into a set first, and
a 2.5 KB selector took the worker from 578 MB to 1.8 GB.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator

from .errors import InvalidInput, TooManyPages

# 1000 characters name hundreds of separate pages or ranges; a longer selector is not a page list
# anyone types, and the bound keeps parsing, error messages and logs small whatever arrives.
MAX_SELECTOR_CHARS = 1000
MAX_ECHO_CHARS = 40  # how much of a bad part an error message repeats
# ASCII digits only: `\d` and int() would also take other scripts' digits ("١-٣").
_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", re.ASCII)


@dataclass(frozen=True)
class PageSelection:
    """1-based inclusive (first, last) ranges, sorted, non-overlapping and non-adjacent."""

    ranges: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    @property
    def last_page(self) -> int:
        return self.ranges[-1][1]


def parse_page_selection(spec: str) -> PageSelection:
    """'3, 1-2,2' -> PageSelection(((1, 3),)). Raises `InvalidInput` (field 'pages'). Bounds against
    the PDF are checked by `select_pages`, once its page count is known."""
    if len(spec) > MAX_SELECTOR_CHARS:
        raise InvalidInput(f"is {len(spec)} characters long, over the limit of {MAX_SELECTOR_CHARS}; "
                           "use ranges like '1-50'", field="pages")
    if not spec.strip():
        raise InvalidInput("is empty; give pages or ranges like '1-3,7', or leave it out for all pages",
                           field="pages")
    ranges = []
    for part in spec.split(","):
        match = _PART.fullmatch(part)
        if not match:
            raise InvalidInput(f"{_echo(part)!r} is not a page or range like '1-3,7'", field="pages")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if first < 1 or last < first:
            raise InvalidInput(f"{_echo(part)!r} is not a valid range (pages start at 1, and a range "
                               "goes up)", field="pages")
        ranges.append((first, last))
    return PageSelection(_merge(ranges))


def select_pages(page_count: int, selection: PageSelection | None, *, max_pages: int) -> Iterator[int]:
    """1-based page numbers to render, in order. Out-of-range or too many is an error raised here,
    before any number is produced, never a truncation."""
    if selection is None:
        if page_count > max_pages:
            raise TooManyPages(f"{page_count} pages selected, over the limit of {max_pages} (MAX_PAGES); "
                               "use 'pages' to split the document", field="pdf")
        return iter(range(1, page_count + 1))
    if selection.last_page > page_count:
        missing = next(max(first, page_count + 1) for first, last in selection.ranges if last > page_count)
        raise InvalidInput(f"page {missing} does not exist; the PDF has {page_count} pages", field="pages")
    if selection.count > max_pages:
        raise TooManyPages(f"{selection.count} pages selected, over the limit of {max_pages} (MAX_PAGES); "
                           "use 'pages' to split the document", field="pages")
    return itertools.chain.from_iterable(range(first, last + 1) for first, last in selection.ranges)


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:  # overlapping or touching: one range
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def _echo(part: str) -> str:
    part = part.strip()
    return part if len(part) <= MAX_ECHO_CHARS else part[:MAX_ECHO_CHARS] + "..."
