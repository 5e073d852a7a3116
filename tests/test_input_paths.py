"""Every input path delivers the pixels intact, end to end through the worker.

A random DeepSeek-OCR-2 is a sharp fingerprint of its input: greedy decoding gives the same tokens for
the same pixels and other tokens for a mirrored, flipped or channel-swapped page (the negative
controls below show it). So each lossless encoding of a page must reproduce the text of the same page
sent as plain PNG, and each page of a document must reproduce the text it gets alone, in order.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tests.helpers import FileServer, LocalApi, b64, encode, make_pdf, send_bytes
from tests.engine_helpers import V2_MODES as MODES
from tests.engine_helpers import handle, make_service

JOB = {"mode": "tiny", "task": "ocr", "ngram_size": 0}
COLOURS = [(220, 30, 30), (30, 140, 40), (30, 60, 220), (240, 180, 0)]


def page(k: int = 0, size=(640, 480)) -> Image.Image:
    """White page, a coloured block top-left (asymmetric on purpose), a dark bar bottom-right, text."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 300, 200), fill=COLOURS[k % len(COLOURS)])
    draw.rectangle((380, 330, 620, 400), fill=(20, 20, 20))
    draw.text((40, 240), f"PAGE {k + 1}", fill="black", font=ImageFont.load_default(size=60))
    return image


@pytest.fixture(scope="module")
def handler(tiny_engine, tiny_checkpoint):
    return make_service(tiny_engine, tiny_checkpoint, MAX_TOKENS="8", RUNAWAY_RETRY="false",
                        ALLOW_PRIVATE_URLS="true")


def pages_of(handler, **source) -> list[dict]:
    out = handle(handler, {**JOB, **source}, "paths")
    assert "error" not in out, out
    return out["pages"]


def text_of(handler, **source) -> list[str]:
    return [p["text"] for p in pages_of(handler, **source)]


@pytest.fixture(scope="module")
def reference(handler) -> str:
    return text_of(handler, image=b64(encode(page(), "PNG")))[0]


def _exif_rotated_png(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": pixels stored turned the other way
    return encode(image.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())


def _transparent_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[(pixels[..., :3] == 255).all(-1), 3] = 0  # the white background becomes transparent
    return encode(Image.fromarray(pixels), "PNG")


LOSSLESS = {
    "data_url": lambda im: "data:image/png;base64," + b64(encode(im, "PNG")),
    "webp_lossless": lambda im: b64(encode(im, "WEBP", lossless=True)),
    "tiff": lambda im: b64(encode(im, "TIFF")),
    "bmp": lambda im: b64(encode(im, "BMP")),
    "exif_rotated": lambda im: b64(_exif_rotated_png(im)),
    "rgba_transparent_background": lambda im: b64(_transparent_png(im)),
    "cmyk_tiff": lambda im: b64(encode(im.convert("CMYK"), "TIFF")),
}


@pytest.mark.parametrize("path", list(LOSSLESS))
def test_lossless_encodings_reproduce_the_png_text(handler, reference, path):
    assert text_of(handler, image=LOSSLESS[path](page())) == [reference]


def test_16_bit_greyscale_matches_8_bit(handler):
    grey = page().convert("L")
    eight = text_of(handler, image=b64(encode(grey, "PNG")))
    sixteen = encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I;16")
    assert text_of(handler, image=b64(sixteen)) == eight


@pytest.mark.parametrize("damage", ["mirror", "flip", "rotate", "swap_channels"])
def test_negative_controls_change_the_text(handler, reference, damage):
    """What a broken path would do to the pixels changes the output, so the tests above can fail."""
    im = page()
    damaged = {"mirror": ImageOps.mirror, "flip": ImageOps.flip,
               "rotate": lambda i: i.transpose(Image.Transpose.ROTATE_180),
               "swap_channels": lambda i: Image.merge("RGB", i.split()[::-1])}[damage](im)
    assert text_of(handler, image=b64(encode(damaged, "PNG"))) != [reference]


@pytest.fixture(scope="module")
def singles(handler) -> list[str]:
    texts = [text_of(handler, image=b64(encode(page(k), "PNG")))[0] for k in range(4)]
    assert len(set(texts)) == 4, "the fingerprints must tell the pages apart"
    return texts


def test_image_list_pages_keep_their_own_text_in_order(handler, singles):
    assert text_of(handler, images=[b64(encode(page(k), "PNG")) for k in range(4)]) == singles
    assert text_of(handler, images=[b64(encode(page(k), "PNG")) for k in (3, 1, 0, 2)]) == [singles[k] for k in
                                                                                            (3, 1, 0, 2)]


@pytest.fixture(scope="module")
def pdf_singles(handler) -> list[str]:
    """What each page gives as a one-page PDF (PDF embedding re-encodes pixels, so PNG texts differ)."""
    texts = [text_of(handler, pdf=b64(make_pdf([page(k)])))[0] for k in range(4)]
    assert len(set(texts)) == 4
    return texts


def test_pdf_pages_in_order_by_base64_url_and_selection(handler, pdf_singles):
    pdf = make_pdf([page(k) for k in range(4)])
    assert text_of(handler, pdf=b64(pdf)) == pdf_singles
    assert text_of(handler, pdf=b64(pdf), pages="4,2") == [pdf_singles[1], pdf_singles[3]]
    server = FileServer({"/doc.pdf": send_bytes(pdf, "application/pdf"),
                         "/p.png": send_bytes(encode(page(2), "PNG"), "image/png")})
    try:
        assert text_of(handler, pdf=server.url + "/doc.pdf") == pdf_singles
        assert text_of(handler, images=[server.url + "/p.png"]) == [text_of(handler, image=b64(encode(page(2), "PNG")))[0]]
    finally:
        server.close()


@pytest.mark.process
def test_local_api_runsync_and_stream_reproduce_the_pages(tiny_checkpoint, singles, pdf_singles):
    api = LocalApi(tiny_checkpoint, MAX_TOKENS="8", RUNAWAY_RETRY="false", STREAM_PAGES="true")
    try:
        body = api.post("/runsync", {"input": {**JOB, "image": b64(encode(page(1), "PNG"))}})
        assert body["status"] == "COMPLETED" and body["output"][0]["text"] == singles[1]
        job = api.post("/run", {"input": {**JOB, "pdf": b64(make_pdf([page(k) for k in range(4)]))}})
        streamed = api.post(f"/stream/{job['id']}")
        assert streamed["status"] == "COMPLETED"
        items = [item["output"] for item in streamed["stream"]]
        assert [i["type"] for i in items] == ["page"] * 4 + ["document"]
        assert [i["text"] for i in items[:4]] == pdf_singles
        assert items[-1]["page_count"] == 4 and "pages" not in items[-1]
        assert items[-1]["text"].split("\n\n<--- Page Split --->\n\n") == pdf_singles
        bad = api.post(f"/stream/{api.post('/run', {'input': {**JOB, 'pdf': b64(b'%PDF-1.4 broken')}})['id']}")
        assert bad["stream"][-1]["output"]["error"].startswith("invalid_pdf: field 'pdf'")
    finally:
        api.stop()


def _exif_rotated_jpeg(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display": pixels stored turned clockwise
    return encode(image.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=92, exif=exif.tobytes())


LOSSY = {
    "jpeg": lambda im: encode(im, "JPEG", quality=90),
    "jpeg_greyscale": lambda im: encode(im.convert("L"), "JPEG", quality=90),
    "jpeg_exif_rotated": _exif_rotated_jpeg,
    "cmyk_jpeg": lambda im: encode(im.convert("CMYK"), "JPEG", quality=90),
    "webp_lossy": lambda im: encode(im, "WEBP", quality=80),
}


@pytest.mark.parametrize("path", list(LOSSY))
def test_lossy_encodings_reproduce_the_text_of_their_decoded_pixels(handler, path):
    """A lossy file cannot match the PNG's text, but it must match the text of its own pixels as a
    standard decode shows them (upright, RGB), and those pixels must still look like the page: together
    the worker got the page, the right way round, in the right colours."""
    im = page()
    data = LOSSY[path](im)
    stored = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    decoded = stored.convert("RGB")
    # The page as the file's colour space holds it (the greyscale JPEG has no colour to match).
    original = np.asarray(im.convert(stored.mode).convert("RGB"), dtype=np.int16)
    assert decoded.size == im.size
    assert np.abs(np.asarray(decoded, dtype=np.int16) - original).mean() < 3
    expected = text_of(handler, image=b64(encode(decoded, "PNG")))
    assert text_of(handler, image=b64(data)) == expected
    assert text_of(handler, image=b64(encode(ImageOps.mirror(decoded), "PNG"))) != expected


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_sees_an_exif_rotated_large_page_upright(handler, mode):
    """A page over 768 px gets local tiles in large/gundam: orientation must be fixed before tiling."""
    big = page(2, size=(1600, 1000))

    def text(image):
        [result] = pages_of(handler, mode=mode, image=image)
        assert result["settings"]["mode"] == mode
        return result["text"], result["settings"]["tiles"], result["settings"]["vision_tokens"]

    upright, tiles, tokens = text(b64(encode(big, "PNG")))
    assert text(b64(_exif_rotated_png(big))) == (upright, tiles, tokens)
    assert text(b64(encode(ImageOps.flip(big), "PNG")))[0] != upright
    # 1600x1000 gets a 3x2 grid of 768 tiles in the tiled modes: 1024 global (256) + 6 * 144 + separator.
    assert (tiles, tokens) == {"tiny": (0, 145), "small": (0, 145), "base": (0, 257),
                               "large": (6, 1121), "gundam": (6, 1121)}[mode]
