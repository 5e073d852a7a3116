"""Page results from model output: layout blocks in pixels, figure crops, annotation, OCR lines in
PaddleOCR's shape, locate matches. Real grounding text through the real assembly on a real image."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from worker.engine.api import Generation
from worker.families import FAMILIES, V2
from worker.results import build_page_result
from worker.schema import parse_job_input
from worker.settings import Settings

MODES = FAMILIES[V2].mode_table("transformers")

LAYOUT = ("<|ref|>title<|/ref|><|det|>[[100, 50, 900, 100]]<|/det|>\n# Report\n\n"
          "<|ref|>image<|/ref|><|det|>[[0, 499, 499, 999]]<|/det|>\n\n"
          "<|ref|>text<|/ref|><|det|>[[500, 500, 999, 999]]<|/det|>\nBody text.")


def generation(raw: str, finish="stop") -> Generation:
    return Generation(raw_text=raw, token_ids=(1, 2), finish_reason=finish, prompt_tokens=270, vision_tokens=257,
                      completion_tokens=2, tiles=0, max_tokens=100, batch_size=3, batch_jobs=2, queue_s=0.05,
                      preprocess_s=0.1, generate_s=0.2)


def page_image() -> Image.Image:
    """1000x800, red bottom-left quadrant (the 'figure'), white elsewhere."""
    image = Image.new("RGB", (1000, 800), "white")
    image.paste((255, 0, 0), (0, 400, 500, 800))
    return image


def build(raw: str, **job):
    request = parse_job_input({"image": "aGk=", **job}, Settings(), MODES)
    return build_page_result(page=1, source="image", image=page_image(), generation=generation(raw),
                             request=request, decode_s=0.01, retry_s=None)


def decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def test_layout_blocks_in_pixels_and_clean_markdown():
    page = build(LAYOUT, task="layout")
    assert [b.label for b in page.blocks] == ["title", "image", "text"]
    title = page.blocks[0].boxes[0]
    assert (title.x1, title.y1, title.x2, title.y2) == (100.1, 40.0, 900.9, 80.1)
    assert title.norm == (100, 50, 900, 100)
    assert page.markdown == "# Report\n\n![image](page-1-figure-1.png)\n\nBody text."
    assert page.text is None and page.figures is None and page.settings.vision_tokens == 257


def test_figure_crops_match_their_boxes():
    page = build(LAYOUT, task="layout", include_figures=True)
    (figure,) = page.figures
    assert figure.name == "page-1-figure-1.png" and figure.block_index == 1
    crop = np.asarray(decode_png(figure.png_base64))
    assert crop.shape[:2] == (400, 500)  # 0..499 x 499..999 of a 1000x800 page
    assert (crop[..., 0] > 200).mean() > 0.97 and (crop[..., 1] < 60).mean() > 0.97, "the crop is the red figure"


def test_annotation_draws_the_boxes():
    page = build(LAYOUT, task="layout", annotate=True)
    annotated = np.asarray(decode_png(page.annotated_png_base64))
    assert annotated.shape[:2] == (800, 1000)
    edge = annotated[40, 300:700]  # the title box's top edge, drawn in red on white
    assert ((edge[:, 0] > 200) & (edge[:, 1] < 80)).mean() > 0.9
    assert (np.asarray(page_image())[40, 300:700] == 255).all()


def test_ocr_lines_in_paddleocr_shape():
    raw = "<|ref|>Invoice 42<|/ref|><|det|>[[100, 100, 400, 150]]<|/det|>\n<|ref|>Total 9.50<|/ref|><|det|>[[100, 200, 300, 250]]<|/det|>"
    page = build(raw, task="ocr_lines")
    assert page.lines == ("Invoice 42", "Total 9.50")
    assert page.boxes[0] == ((100.1, 80.1), (400.4, 80.1), (400.4, 120.1), (100.1, 120.1))
    assert page.confidences == (None, None) and "no per-line confidence" in page.confidence_note
    assert page.text == "Invoice 42\n\nTotal 9.50"


def test_locate_returns_the_boxes_of_the_query():
    raw = "<|ref|>Total<|/ref|><|det|>[[10, 20, 30, 40], [600, 700, 650, 720]]<|/det|>"
    page = build(raw, task="locate", query="Total")
    assert [m.norm for m in page.matches] == [(10, 20, 30, 40), (600, 700, 650, 720)]


def test_markdown_task_strips_tags_and_keeps_raw_on_request():
    page = build(LAYOUT, task="markdown", include_raw=True)
    assert "<|" not in page.markdown and page.raw == LAYOUT and page.blocks is None


def test_plain_tasks_return_text_untouched():
    assert build("Hello <b>world</b>\n", task="ocr").text == "Hello <b>world</b>"


def test_runaway_page_carries_a_warning():
    request = parse_job_input({"image": "aGk=", "task": "ocr"}, Settings(), MODES)
    page = build_page_result(page=1, source="image", image=page_image(), generation=generation("a a a", "length"),
                             request=request, decode_s=0.0, retry_s=0.7)
    assert page.finish_reason == "length" and page.retried and page.timings.retry_generate_s == 0.7
    assert page.warnings[0].code == "runaway_generation" and "retried" in page.warnings[0].message
    assert "error" not in page.to_output()


def test_page_timings_report_the_batch_it_shared():
    page = build("plain", task="ocr")
    assert (page.timings.batch_size, page.timings.batch_jobs, page.timings.queue_s) == (3, 2, 0.05)
    assert page.timings.retry_generate_s == 0.0 and not page.retried


def test_mended_grounding_is_a_page_warning_and_keeps_the_content():
    """Real DeepSeek-OCR output (corpus file 04): an equation ref with no close and no box."""
    page = build("<|ref|>equation\n\\[ \\frac{L - 3x}{6} \\]\n", task="markdown")
    assert "\\frac{L - 3x}{6}" in page.markdown
    assert [w.code for w in page.warnings] == ["malformed_grounding"]
    assert build(LAYOUT, task="markdown").warnings == ()
