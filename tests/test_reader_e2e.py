"""End to end on the trained tiny reader: the word on a page must come back through every input path
of the worker. A path that rotates, mirrors, swaps channels, clips or drops the pixels loses the word;
the negative control shows the reader really fails on such pages."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tests.helpers import FileServer, LocalApi, b64, encode, make_pdf, run_worker_once, send_bytes
from worker.handler import Handler
from worker.modes import MODE_NAMES
from worker.settings import Settings


def word_page(word: str, size=(900, 700), font_px=80, at=(120, 260)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text(at, word, fill="black", font=ImageFont.load_default(size=font_px))
    return image


@pytest.fixture(scope="module")
def handler(reader_pipeline, reader_settings):
    return Handler(reader_pipeline, reader_settings)


def read(handler, **job) -> dict:
    out = handler({"id": "e2e", "input": {"mode": "base", "task": "ocr", "ngram_size": 0, **job}})
    assert "error" not in out, out
    return out


def test_committed_checkpoint_matches_the_training_script(reader_dir, reader_engine):
    import sys

    sys.path.insert(0, str(reader_dir.parent))
    from train_tiny_reader import SETTINGS, load_words
    from tiny_model import build_config, build_tokenizer

    recorded = json.loads((reader_dir / "training.json").read_text())
    assert {k: recorded[k] for k in SETTINGS if k != "steps"} == {k: v for k, v in SETTINGS.items() if k != "steps"}
    assert (reader_dir / "words.txt").read_text().split() == load_words()
    expected = build_config(build_tokenizer(load_words()), **SETTINGS["model"])
    loaded = reader_engine.model.config
    assert loaded.text_config.hidden_size == expected.text_config.hidden_size
    assert loaded.vision_config.sam_config.hidden_size == expected.vision_config.sam_config.hidden_size
    assert loaded.image_token_id == expected.image_token_id
    size = sum(p.stat().st_size for p in reader_dir.iterdir())
    assert size < 8 * 1024 * 1024, f"checkpoint is {size} bytes"


def _jpeg_with_exif_rotation(page: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display": the pixels are stored turned the other way
    return encode(page.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95, exif=exif.tobytes())


def _transparent_png(word: str) -> bytes:
    page = Image.new("RGBA", (900, 700), (0, 0, 0, 0))
    ImageDraw.Draw(page).text((120, 260), word, fill=(0, 0, 0, 255), font=ImageFont.load_default(size=80))
    return encode(page, "PNG")


def _png16(page: Image.Image) -> bytes:
    data = encode(Image.fromarray((np.asarray(page.convert("L")).astype(np.uint16) * 257)), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    return data


ENCODINGS = {
    "png": lambda p, w: b64(encode(p, "PNG")),
    "jpeg": lambda p, w: b64(encode(p, "JPEG", quality=90)),
    "data_url": lambda p, w: "data:image/png;base64," + b64(encode(p, "PNG")),
    "webp": lambda p, w: b64(encode(p, "WEBP", quality=90)),
    "exif_rotated_jpeg": lambda p, w: b64(_jpeg_with_exif_rotation(p)),
    "rgba_transparent": lambda p, w: b64(_transparent_png(w)),
    "grayscale": lambda p, w: b64(encode(p.convert("L"), "PNG")),
    "png_16bit": lambda p, w: b64(_png16(p)),
    "cmyk_jpeg": lambda p, w: b64(encode(p.convert("CMYK"), "JPEG", quality=95)),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_word_survives_every_encoding(handler, reader_words, encoding):
    word = reader_words[list(ENCODINGS).index(encoding) % len(reader_words)]
    out = read(handler, image=ENCODINGS[encoding](word_page(word), word))
    assert out["text"] == word


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_every_mode_reads(handler, reader_words, mode):
    words = reader_words[:4]
    pages = [word_page(w, size=size) for w, size in zip(words, [(900, 700), (1400, 1900), (600, 500), (1800, 900)])]
    out = read(handler, images=[b64(encode(p, "PNG")) for p in pages], mode=mode)
    assert [p["text"] for p in out["pages"]] == words
    assert {p["settings"]["mode"] for p in out["pages"]} == {mode}


def test_batch_members_do_not_cross_talk(handler, reader_words):
    words = [reader_words[i] for i in (3, 7, 11, 15, 1, 5, 9, 13)]
    out = read(handler, images=[b64(encode(word_page(w), "PNG")) for w in words], mode="gundam")
    assert [p["text"] for p in out["pages"]] == words
    assert {p["timings"]["batch_size"] for p in out["pages"]} == {8}


def test_pdf_pages_come_back_in_order_by_base64_and_url(handler, reader_pipeline, reader_words):
    words = reader_words[5:10]
    pdf = make_pdf([word_page(w) for w in words])
    out = read(handler, pdf=b64(pdf), mode="base")
    assert [p["text"] for p in out["pages"]] == words
    assert out["text"].split("\n\n<--- Page Split --->\n\n") == words
    assert [p["text"] for p in read(handler, pdf=b64(pdf), pages="2,4")["pages"]] == [words[1], words[3]]
    server = FileServer({"/doc.pdf": send_bytes(pdf, "application/pdf")})
    try:
        settings = Settings.from_env({"MODEL_PATH": str(reader_pipeline.settings.model_path), "MAX_TOKENS": "8",
                                      "ALLOW_PRIVATE_URLS": "true"})
        url_handler = Handler(type(reader_pipeline)(reader_pipeline.engine, settings, reader_pipeline.model), settings)
        out = read(url_handler, pdf=server.url + "/doc.pdf")
        assert [p["text"] for p in out["pages"]] == words
    finally:
        server.close()


def test_negative_control_mirrored_and_upside_down_pages_are_not_read(handler, reader_words):
    words = reader_words[:8]
    upright = read(handler, images=[b64(encode(word_page(w), "PNG")) for w in words])
    assert sum(p["text"] == w for p, w in zip(upright["pages"], words)) == 8
    for transform in (ImageOps.mirror, ImageOps.flip):
        out = read(handler, images=[b64(encode(transform(word_page(w)), "PNG")) for w in words])
        hits = sum(p["text"] == w for p, w in zip(out["pages"], words))
        assert hits <= 3, f"{transform.__name__}: {hits}/8 still read, the test could not catch a broken path"


def test_worker_process_test_input_reads_the_word(reader_dir, reader_words):
    word = reader_words[12]
    proc = run_worker_once(reader_dir, {"image": b64(encode(word_page(word), "PNG")), "mode": "tiny", "task": "ocr"},
                           MAX_TOKENS="8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"'text': '{word}'" in proc.stdout + proc.stderr


def test_local_api_runsync_and_stream_read_the_words(reader_dir, reader_words):
    words = reader_words[14:18]
    pdf = b64(make_pdf([word_page(w) for w in words]))
    api = LocalApi(reader_dir, MAX_TOKENS="8", STREAM_PAGES="true", BATCH_SIZE="2")
    try:
        body = api.post("/runsync", {"input": {"image": b64(encode(word_page(words[0]), "PNG")), "task": "ocr"}})
        assert body["status"] == "COMPLETED" and body["output"][0]["text"] == words[0]
        job = api.post("/run", {"input": {"pdf": pdf, "task": "ocr", "mode": "base"}})
        streamed = api.post(f"/stream/{job['id']}")
        assert streamed["status"] == "COMPLETED"
        items = [item["output"] for item in streamed["stream"]]
        assert [i["type"] for i in items] == ["page"] * 4 + ["document"]
        assert [i["text"] for i in items[:4]] == words and items[-1]["page_count"] == 4
        assert "pages" not in items[-1] and items[-1]["text"].count("Page Split") == 3
    finally:
        api.stop()
