"""The `pages` selector: parsing into compact ranges, then checking against the PDF before any page
number exists. Found by an adversarial run: ranges were expanded into a set before any check, and a
2.5 KB selector took the worker from 578 MB to 1.8 GB."""

from __future__ import annotations

import pytest

from worker.errors import InvalidInput, TooManyPages
from worker.page_selection import MAX_SELECTOR_CHARS, PageSelection, parse_page_selection, select_pages


def test_parses_sorts_and_merges_ranges():
    assert parse_page_selection("1-3,7").ranges == ((1, 3), (7, 7))
    assert parse_page_selection(" 5 ").ranges == ((5, 5),)
    assert parse_page_selection("3, 1-2,2").ranges == ((1, 3),)
    assert parse_page_selection("10-12, 1-4, 5, 3-4, 20").ranges == ((1, 5), (10, 12), (20, 20))
    assert parse_page_selection("1 - 3 ,7").count == 4


def test_a_huge_range_is_one_range_not_a_billion_numbers():
    selection = parse_page_selection("1-1000000000")
    assert selection == PageSelection(((1, 1_000_000_000),))
    assert selection.count == 1_000_000_000  # counted from the bounds, not by listing pages


def test_size_is_the_number_of_ranges_not_pages():
    # The shape of the selector behind the 1.8 GB: many wide ranges. Here 40 of 900 million pages each.
    spec = ",".join(f"{k * 10**9 + 1}-{k * 10**9 + 9 * 10**8}" for k in range(40))
    assert len(spec) <= MAX_SELECTOR_CHARS
    selection = parse_page_selection(spec)
    assert len(selection.ranges) == 40 and selection.count == 40 * 9 * 10**8


def test_a_range_past_the_pdf_is_refused_before_any_page_number_is_made():
    with pytest.raises(InvalidInput) as excinfo:
        select_pages(10, parse_page_selection("1-1000000000"), max_pages=100)
    assert excinfo.value.field == "pages"
    assert excinfo.value.message == "page 11 does not exist; the PDF has 10 pages"
    with pytest.raises(InvalidInput) as excinfo:
        select_pages(2, parse_page_selection("1,3"), max_pages=100)
    assert excinfo.value.message == "page 3 does not exist; the PDF has 2 pages"
    with pytest.raises(InvalidInput) as excinfo:
        select_pages(10, parse_page_selection("2,40-50"), max_pages=100)
    assert excinfo.value.message == "page 40 does not exist; the PDF has 10 pages"


def test_more_than_max_pages_is_too_many_pages():
    with pytest.raises(TooManyPages) as excinfo:
        select_pages(10**6, parse_page_selection("1-200000"), max_pages=100)
    assert excinfo.value.field == "pages" and "200000 pages selected" in excinfo.value.message
    assert "MAX_PAGES" in excinfo.value.message
    with pytest.raises(TooManyPages) as excinfo:  # no selector: the whole PDF counts
        select_pages(101, None, max_pages=100)
    assert excinfo.value.field == "pdf"


def test_a_checked_selection_yields_its_pages_lazily_and_in_order():
    pages = select_pages(10**9, parse_page_selection("7,1-3,3-4"), max_pages=100)
    assert iter(pages) is pages  # an iterator, not a list
    assert list(pages) == [1, 2, 3, 4, 7]
    assert list(select_pages(3, None, max_pages=3)) == [1, 2, 3]
    assert list(select_pages(5, parse_page_selection("5"), max_pages=1)) == [5]


def test_selector_longer_than_the_bound_is_refused_with_its_length():
    spec = ",".join(["1"] * 600)  # 1199 characters of valid syntax
    with pytest.raises(InvalidInput) as excinfo:
        parse_page_selection(spec)
    assert excinfo.value.field == "pages"
    assert excinfo.value.message == (f"is {len(spec)} characters long, over the limit of {MAX_SELECTOR_CHARS}; "
                                     "use ranges like '1-50'")
    assert parse_page_selection(",".join(["1"] * 500)).ranges == ((1, 1),)  # 999 characters pass


@pytest.mark.parametrize("bad", ["0", "1-", "-3", "1,,2", "x-y", "", "  ", "5-3", "0-2", "1.5", "+1",
                                 "\u0661-\u0663", "1-2-3", "1;2"])
def test_bad_syntax_and_empty_or_inverted_ranges_are_invalid_input(bad):
    with pytest.raises(InvalidInput) as excinfo:
        parse_page_selection(bad)
    assert excinfo.value.field == "pages"


def test_a_bad_part_is_echoed_only_in_part():
    with pytest.raises(InvalidInput) as excinfo:
        parse_page_selection("1," + "x" * 900)
    assert len(excinfo.value.message) < 120 and "xxx..." in excinfo.value.message
