"""The tiny random checkpoint is a fingerprint of its input: ordinary document pages that differ by
one word give different greedy text in every view, through the engine and through a whole PDF job.
Every input-path test relies on this (same pixels, same text; other pixels, other text)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tests.engine_helpers import A4, generate_all, generate_one, handle, make_service, page
from tests.helpers import b64, make_pdf

pytestmark = pytest.mark.engine
WORDS = ("LION", "FROG", "ZEBRA")


def one_word_page(word: str) -> Image.Image:
    """An A4 page at 150 dpi, white, with one 90 px word: what the fingerprint used to be blind to."""
    image = Image.new("RGB", A4, "white")
    ImageDraw.Draw(image).text((300, 700), word, fill="black", font=ImageFont.load_default(size=90))
    return image


@pytest.mark.parametrize("mode", ["tiny", "base", "gundam"])
def test_pages_that_differ_by_one_word_give_different_text_in_every_view(tiny_engine, mode):
    texts = [generate_one(tiny_engine, page(one_word_page(w), mode, 16)).token_ids for w in WORDS]
    assert len(set(texts)) == len(WORDS), texts


def test_the_fingerprint_is_varied_and_sees_orientation(tiny_engine):
    lion = one_word_page("LION")
    upright, mirrored = (generate_one(tiny_engine, page(im, "base", 16)).token_ids
                         for im in (lion, ImageOps.mirror(lion)))
    assert upright != mirrored
    assert len(set(upright)) > 3, "the model repeats one token: its output says little about the page"


def test_batched_fingerprints_equal_one_at_a_time(tiny_engine):
    pages = [page(one_word_page(w), "gundam", 12, job_id=w) for w in WORDS]
    batched = generate_all(tiny_engine, pages)
    assert max(g.batch_size for g in batched) > 1
    assert [g.token_ids for g in batched] == [generate_one(tiny_engine, p).token_ids for p in pages]


def test_a_pdf_of_one_word_pages_gives_each_page_its_own_text(tiny_engine, tiny_checkpoint):
    service = make_service(tiny_engine, tiny_checkpoint, MAX_TOKENS="16", RUNAWAY_RETRY="false")
    out = handle(service, {"pdf": b64(make_pdf([one_word_page(w) for w in WORDS], dpi=150)), "task": "ocr",
                           "mode": "gundam", "ngram_size": 0})
    texts = [p["text"] for p in out["pages"]]
    assert out["page_count"] == 3 and len(set(texts)) == 3, texts
