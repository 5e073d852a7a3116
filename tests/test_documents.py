"""Documents through the real handler and pipeline on the tiny random checkpoint: PDFs rendered by
pypdfium2, image lists, URLs from a local server, per-page failures, output limits and S3 upload."""

from __future__ import annotations

import json

import pytest
import requests
from PIL import Image

from tests.helpers import FileServer, b64, encode, encrypt_pdf, make_pdf, send_bytes, text_page, zero_page_pdf
from tests.engine_helpers import fail_on_red_pages, handle, make_service

def make_handler(engine, checkpoint, **env):
    return make_service(engine, checkpoint, **{"MAX_TOKENS": "3", "RUNAWAY_RETRY": "false", **env})


@pytest.fixture(scope="module")
def handler(tiny_engine, tiny_checkpoint):
    return make_handler(tiny_engine, tiny_checkpoint, ALLOW_PRIVATE_URLS="true", MAX_FAILED_PAGE_RATIO="0.5")


def run(service, **job_input):
    return handle(service, job_input, "job-1")


def pdf_pages(n=3, size=(600, 800)) -> list[Image.Image]:
    return [text_page([f"Page {i + 1}"], size=size) for i in range(n)]


def test_pdf_pages_in_order_with_dpi(handler):
    out = run(handler, pdf=b64(make_pdf(pdf_pages(3))), mode="tiny", task="ocr", dpi=144)
    assert "error" not in out, out
    assert out["page_count"] == 3 and [p["source"] for p in out["pages"]] == ["pdf#1", "pdf#2", "pdf#3"]
    # 600x800 pt at 144 dpi: 1200x1600 px, the original pipelines' default resolution.
    assert {(p["width"], p["height"]) for p in out["pages"]} == {(1200, 1600)}
    assert out["settings"]["dpi"] == 144
    assert out["text"].count("<--- Page Split --->") == 2


def test_page_selection(handler):
    out = run(handler, pdf=b64(make_pdf(pdf_pages(4))), mode="tiny", task="ocr", pages="2,4")
    assert [p["source"] for p in out["pages"]] == ["pdf#2", "pdf#4"] and [p["page"] for p in out["pages"]] == [1, 2]
    out = run(handler, pdf=b64(make_pdf(pdf_pages(2))), mode="tiny", pages="3")
    assert out["error"].startswith("invalid_input: field 'pages': page 3 does not exist; the PDF has 2 pages")


def test_encrypted_pdf(handler):
    data = encrypt_pdf(make_pdf(pdf_pages(1)), "s3cret")
    assert run(handler, pdf=b64(data), mode="tiny")["error_detail"]["code"] == "pdf_password_required"
    wrong = run(handler, pdf=b64(data), mode="tiny", pdf_password="nope")
    assert wrong["error_detail"] == {"code": "pdf_password_incorrect", "field": "pdf_password",
                                     "message": "the password does not open this PDF"}
    ok = run(handler, pdf=b64(data), mode="tiny", task="ocr", pdf_password="s3cret")
    assert "error" not in ok and ok["page_count"] == 1


def test_corrupt_empty_and_mislabelled_files(handler):
    corrupt = make_pdf(pdf_pages(1))[:200]
    assert run(handler, pdf=b64(corrupt), mode="tiny")["error_detail"]["code"] == "invalid_pdf"
    # After an encrypted file, pdfium's stale last error must not turn a page-less PDF into a password error.
    run(handler, pdf=b64(encrypt_pdf(make_pdf(pdf_pages(1)), "pw")), mode="tiny")
    out = run(handler, pdf=b64(zero_page_pdf()), mode="tiny")
    assert out["error_detail"]["code"] == "invalid_pdf" and "no pages" in out["error"]
    png_as_pdf = run(handler, pdf=b64(encode(pdf_pages(1)[0], "PNG")), mode="tiny")
    assert png_as_pdf["error_detail"]["code"] == "unsupported_content" and "PNG image" in png_as_pdf["error"]
    pdf_as_image = run(handler, image=b64(make_pdf(pdf_pages(1))), mode="tiny")
    assert pdf_as_image["error_detail"]["code"] == "unsupported_content"


def test_page_limit_is_an_error_not_a_truncation(tiny_engine, tiny_checkpoint):
    small = make_handler(tiny_engine, tiny_checkpoint, MAX_PAGES="2")
    out = run(small, pdf=b64(make_pdf(pdf_pages(3))), mode="tiny")
    assert out["error_detail"]["code"] == "too_many_pages" and "MAX_PAGES" in out["error"]
    assert run(small, pdf=b64(make_pdf(pdf_pages(3))), mode="tiny", task="ocr", pages="1-2")["page_count"] == 2


def test_pixel_limit_per_page(tiny_engine, tiny_checkpoint):
    small = make_handler(tiny_engine, tiny_checkpoint, MAX_IMAGE_PIXELS="400000")
    out = run(small, pdf=b64(make_pdf(pdf_pages(1))), mode="tiny", dpi=144)
    assert out["error_detail"]["code"] == "image_too_large" and "lower 'dpi'" in out["error"]


def test_one_bad_page_is_flagged_and_the_document_kept(handler):
    good = b64(encode(text_page(["ok"], size=(500, 400)), "PNG"))
    out = run(handler, images=[good, b64(b"\x89PNG\r\n\x1a\ntruncated"), good], mode="tiny", task="ocr")
    assert "error" not in out and out["failed_pages"] == 1
    bad = out["pages"][1]
    assert bad["failure"]["code"] == "invalid_image" and bad["failure"]["field"] == "images[1]"
    assert bad["finish_reason"] == "failed" and "error" not in bad
    assert [p.get("failure") is None for p in out["pages"]] == [True, False, True]


def test_too_many_failed_pages_fail_the_job(tiny_engine, tiny_checkpoint):
    strict = make_handler(tiny_engine, tiny_checkpoint, MAX_FAILED_PAGE_RATIO="0")
    good = b64(encode(text_page(["ok"], size=(500, 400)), "PNG"))
    out = handle(strict, {"images": [good, b64(b"junk")], "mode": "tiny"})
    assert out["error_detail"]["code"] == "too_many_failed_pages" and "images[1]" in out["error"]


def test_runaway_page_is_reported_and_retried(tiny_engine, tiny_checkpoint):
    retrying = make_handler(tiny_engine, tiny_checkpoint, RUNAWAY_RETRY="true", MAX_TOKENS="12",
                            RETRY_NGRAM_SIZE="2", RETRY_NGRAM_WINDOW="12")
    out = run(retrying, image=b64(encode(Image.new("RGB", (400, 400), "white"), "PNG")), mode="tiny",
              task="ocr", ngram_size=0)
    page = out["pages"][0]
    assert page["finish_reason"] == "length" and out["finish_reason"] == "length"
    assert page["retried"] is True and page["warnings"][0]["code"] == "runaway_generation"


def test_urls_from_a_local_server(tiny_engine, tiny_checkpoint, handler):
    pdf = make_pdf(pdf_pages(2))
    png = encode(text_page(["url"], size=(500, 400)), "PNG")
    server = FileServer({"/doc.pdf": send_bytes(pdf, "application/pdf"), "/page.png": send_bytes(png, "image/png"),
                         "/page.html": send_bytes(b"<html>hi</html>", "text/html")})
    try:
        out = run(handler, pdf=server.url + "/doc.pdf", mode="tiny", task="ocr")
        assert out["page_count"] == 2
        out = run(handler, images=[server.url + "/page.png", "data:image/png;base64," + b64(png)], mode="tiny",
                  task="ocr")
        assert [p["source"] for p in out["pages"]] == ["images[0]", "images[1]"] and out["failed_pages"] == 0
        html = run(handler, image=server.url + "/page.html", mode="tiny")
        assert html["error_detail"]["code"] == "unsupported_content" and "text/html" in html["error"]
        refused = run(make_handler(tiny_engine, tiny_checkpoint), pdf=server.url + "/doc.pdf", mode="tiny")
        assert refused["error_detail"]["code"] == "url_not_allowed"
    finally:
        server.close()


def test_payload_limit_over_the_whole_job(tiny_engine, tiny_checkpoint):
    import numpy as np

    noise = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 50, 3), dtype=np.uint8)), "PNG")
    assert 7000 < len(noise) < 10000  # two pages fit in 20000 bytes, three do not
    small = make_handler(tiny_engine, tiny_checkpoint, MAX_INPUT_BYTES="20000")
    assert "error" not in handle(small, {"images": [b64(noise)] * 2, "mode": "tiny"})
    out = handle(small, {"images": [b64(noise)] * 3, "mode": "tiny"})
    assert out["error_detail"] == {"code": "payload_too_large", "field": "images[2]",
                                   "message": "the job's files exceed MAX_INPUT_BYTES (20000 bytes)"}


def test_oversized_output_fails_clearly_without_storage(tiny_engine, tiny_checkpoint):
    tight = make_handler(tiny_engine, tiny_checkpoint, MAX_OUTPUT_BYTES="2000")
    out = run(tight, pdf=b64(make_pdf(pdf_pages(3))), mode="tiny", task="ocr")
    assert out["error_detail"]["code"] == "output_too_large" and "STREAM_PAGES" in out["error"]


def test_oversized_output_is_uploaded_to_s3_compatible_storage(tiny_engine, tiny_checkpoint):
    from moto.server import ThreadedMotoServer
    import boto3

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{moto._server.server_port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="ocr-results")
        uploading = make_handler(tiny_engine, tiny_checkpoint, MAX_OUTPUT_BYTES="2000",
                                 BUCKET_ENDPOINT_URL=f"{endpoint}/ocr-results", BUCKET_ACCESS_KEY_ID="k",
                                 BUCKET_SECRET_ACCESS_KEY="s")
        out = run(uploading, pdf=b64(make_pdf(pdf_pages(3))), mode="tiny", task="ocr")
        assert "error" not in out and "pages" not in out and out["output_bytes"] > 2000
        full = requests.get(out["output_url"], timeout=10).json()
        assert full["page_count"] == 3 and len(full["pages"]) == 3
        assert len(json.dumps(full, ensure_ascii=False).encode()) == out["output_bytes"]
    finally:
        moto.stop()


def test_a_page_the_model_fails_on_is_flagged_and_its_document_kept(tiny_engine, tiny_checkpoint, monkeypatch):
    """A model failure (say a CUDA device-side assert) on one page of a document flags that page;
    the job keeps the others, and a one-page job reports the page's own code. The failure is injected
    into transformers' generate for batches holding an all-red page."""

    tolerant = make_handler(tiny_engine, tiny_checkpoint, MAX_FAILED_PAGE_RATIO="0.5")
    fail_on_red_pages(tiny_engine, monkeypatch)
    pages = [Image.new("RGB", (400, 400), c) for c in ("white", "red", "black")]
    out = run(tolerant, images=[b64(encode(p, "PNG")) for p in pages], mode="tiny", task="ocr")
    assert "error" not in out, out
    assert [p["finish_reason"] != "failed" for p in out["pages"]] == [True, False, True]
    assert out["pages"][1]["failure"]["code"] == "model_error" and out["failed_pages"] == 1
    single = run(tolerant, image=b64(encode(pages[1], "PNG")), mode="tiny")
    assert single["error_detail"]["code"] == "model_error"
