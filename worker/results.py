"""Validated, immutable result types and their assembly from engine output.

In: a decoded page's metadata, its `Generation`, the request. Out: `PageResult` per page and one
`DocumentResult` per job, serialised with `to_output()`. Per-page problems are `failure` (no usable
output) or `warnings` (output kept), never a key named `error`: RunPod ends a stream at the first
yielded dict with a top-level `error`.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict

from .engine.api import Generation
from .grounding import FIGURE_LABEL, PAGE_SEPARATOR, Grounding, parse_grounding, render_markdown
from .schema import OcrRequest

_FROZEN = ConfigDict(frozen=True, extra="forbid")
CONFIDENCE_NOTE = "DeepSeek-OCR gives no per-line confidence; the field is null"
# Warning code of a page that hit max_tokens without end of sequence (a repetition loop, usually).
RUNAWAY_WARNING = "runaway_generation"
# Warning code of a page whose grounding tags the parser had to mend (missing openers, text in a
# det, stray closers): content was kept, but the layout of those blocks is less certain.
MALFORMED_WARNING = "malformed_grounding"
_ANNOTATION_COLOURS = {"title": "red", "sub_title": "orange", "table": "blue", "image": "green",
                       "equation": "purple"}


class Box(BaseModel):
    model_config = _FROZEN
    x1: float
    y1: float
    x2: float
    y2: float
    norm: tuple[int, int, int, int]  # the model's 0..999 coordinates


class Block(BaseModel):
    model_config = _FROZEN
    index: int
    label: str
    content: str
    boxes: tuple[Box, ...]
    grounded: bool
    truncated: bool


class Figure(BaseModel):
    model_config = _FROZEN
    name: str
    block_index: int
    box: Box
    png_base64: str


class Issue(BaseModel):
    model_config = _FROZEN
    code: str
    message: str
    field: str | None = None


class Usage(BaseModel):
    model_config = _FROZEN
    prompt_tokens: int = 0
    vision_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class PageSettings(BaseModel):
    model_config = _FROZEN
    mode: str
    view_size: int
    tile_size: int | None
    crop: bool
    min_tiles: int
    max_tiles: int
    tiles: int
    vision_tokens: int
    max_tokens: int
    ngram_size: int
    ngram_window: int


class PageTimings(BaseModel):
    model_config = _FROZEN
    decode_s: float
    queue_s: float = 0.0  # waiting in the engine's queue for a batch slot
    preprocess_s: float = 0.0  # the processor on this page
    generate_s: float = 0.0  # the model time of the batch (or vLLM request) it ran in
    retry_generate_s: float = 0.0  # the runaway retry's model time, when there was one
    batch_size: int = 0  # pages that shared the engine step
    batch_jobs: int = 0  # distinct jobs among them


class PageResult(BaseModel):
    model_config = _FROZEN
    type: Literal["page"] = "page"
    page: int  # 1-based position in this job's output
    source: str  # the input field, with the PDF page number: "pdf#3", "images[1]"
    width: int = 0
    height: int = 0
    text: str | None = None
    markdown: str | None = None
    raw: str | None = None
    blocks: tuple[Block, ...] | None = None
    lines: tuple[str, ...] | None = None
    boxes: tuple[tuple[tuple[float, float], ...], ...] | None = None
    confidences: tuple[None, ...] | None = None
    confidence_note: str | None = None
    matches: tuple[Box, ...] | None = None
    figures: tuple[Figure, ...] | None = None
    annotated_png_base64: str | None = None
    settings: PageSettings | None = None
    usage: Usage = Usage()
    finish_reason: Literal["stop", "length", "failed"] = "stop"
    retried: bool = False
    warnings: tuple[Issue, ...] = ()
    failure: Issue | None = None
    timings: PageTimings

    @property
    def content(self) -> str:
        return self.markdown if self.markdown is not None else (self.text or "")

    def to_output(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ModelMeta(BaseModel):
    model_config = _FROZEN
    name: str
    revision: str
    family: str
    engine: str
    device: str
    dtype: str


class DocumentSettings(BaseModel):
    """The settings the job ran with (per page, `PageSettings` adds the tiles each page got)."""

    model_config = _FROZEN
    mode: str
    mode_note: str
    view_size: int
    tile_size: int | None
    crop: bool
    min_tiles: int
    max_tiles: int
    prompt: str
    max_tokens: int
    ngram_size: int
    ngram_window: int
    dpi: int | None = None


class DocumentTimings(BaseModel):
    model_config = _FROZEN
    total_s: float
    decode_s: float


class DocumentResult(BaseModel):
    model_config = _FROZEN
    type: Literal["document"] = "document"
    task: str
    mode: str
    text: str | None = None
    markdown: str | None = None
    page_count: int
    failed_pages: int
    pages: tuple[PageResult, ...] | None  # None in the closing item of a stream (pages went before)
    settings: DocumentSettings
    usage: Usage
    finish_reason: Literal["stop", "length", "failed"]
    model: ModelMeta
    timings: DocumentTimings

    def to_output(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def build_page_result(*, page: int, source: str, image: Image.Image, generation: Generation,
                      request: OcrRequest, decode_s: float, retry_s: float | None) -> PageResult:
    """Turn one generation into a page result: clean text, parsed layout per task, crops.
    `retry_s` is the runaway retry's model time when `generation` is the retry's answer."""
    width, height = image.size
    fields: dict[str, Any] = {}
    grounding: Grounding | None = None
    shape = request.task.shape
    retried = retry_s is not None
    if request.task.grounded:
        grounding = parse_grounding(generation.raw_text)
        content = render_markdown(grounding, figure_name=lambda k: figure_name(page, k))
    else:
        content = generation.raw_text.strip()
    fields[request.output_key] = content
    if request.include_raw:
        fields["raw"] = generation.raw_text
    if grounding is not None:
        blocks = to_blocks(grounding, width, height)
        if shape == "layout":
            fields["blocks"] = blocks
        elif shape == "lines":
            lines = [b for b in blocks if b.grounded and b.boxes]
            fields["lines"] = tuple(b.label for b in lines)
            fields["boxes"] = tuple(_polygon(b.boxes[0]) for b in lines)
            fields["confidences"] = tuple(None for _ in lines)
            fields["confidence_note"] = CONFIDENCE_NOTE
        elif shape == "matches":
            fields["matches"] = tuple(box for b in blocks if b.grounded for box in b.boxes)
        if request.include_figures:
            fields["figures"] = crop_figures(image, blocks, page)
        if request.annotate:
            fields["annotated_png_base64"] = annotate_page(image, blocks)
    warnings = []
    if generation.finish_reason == "length":
        warnings.append(Issue(code=RUNAWAY_WARNING,
                              message=f"hit max_tokens ({generation.max_tokens}) without end of sequence"
                                      + ("; retried with a stricter repetition guard" if retried else "")))
    if grounding is not None and grounding.repairs:
        warnings.append(Issue(code=MALFORMED_WARNING,
                              message=f"mended {grounding.repairs} malformed grounding tag(s); content kept"))
    view = request.mode.view
    guard = request.guard
    return PageResult(
        page=page, source=source, width=width, height=height, **fields,
        settings=PageSettings(mode=request.mode.name, view_size=view.view_size, tile_size=view.tile_size,
                              crop=view.crop, min_tiles=view.min_tiles, max_tiles=view.max_tiles,
                              tiles=generation.tiles, vision_tokens=generation.vision_tokens,
                              max_tokens=generation.max_tokens, ngram_size=guard.ngram_size,
                              ngram_window=guard.window),
        usage=Usage(prompt_tokens=generation.prompt_tokens, vision_tokens=generation.vision_tokens,
                    completion_tokens=generation.completion_tokens,
                    total_tokens=generation.prompt_tokens + generation.completion_tokens),
        finish_reason=generation.finish_reason, retried=retried, warnings=tuple(warnings),
        timings=PageTimings(decode_s=round(decode_s, 4), queue_s=generation.queue_s,
                            preprocess_s=generation.preprocess_s, generate_s=generation.generate_s,
                            retry_generate_s=round(retry_s or 0.0, 4), batch_size=generation.batch_size,
                            batch_jobs=generation.batch_jobs),
    )


def build_document_result(pages: list[PageResult], *, request: OcrRequest, model: ModelMeta,
                          total_s: float, include_pages: bool = True) -> DocumentResult:
    usage = sum((p.usage for p in pages), Usage())
    failed = sum(1 for p in pages if p.failure is not None)
    if failed == len(pages):
        finish = "failed"
    elif any(p.finish_reason == "length" for p in pages):
        finish = "length"
    else:
        finish = "stop"
    joined = PAGE_SEPARATOR.join(p.content for p in pages)
    view = request.mode.view
    return DocumentResult(
        task=request.task.name, mode=request.mode.name, page_count=len(pages), failed_pages=failed,
        pages=tuple(pages) if include_pages else None, **{request.output_key: joined},
        settings=DocumentSettings(
            mode=request.mode.name, mode_note=request.mode.note, view_size=view.view_size,
            tile_size=view.tile_size, crop=view.crop, min_tiles=view.min_tiles, max_tiles=view.max_tiles,
            prompt=request.prompt, max_tokens=request.max_tokens, ngram_size=request.guard.ngram_size,
            ngram_window=request.guard.window, dpi=request.dpi if request.sources[0].expect == "pdf" else None),
        usage=usage, finish_reason=finish, model=model,
        timings=DocumentTimings(total_s=round(total_s, 4), decode_s=round(sum(p.timings.decode_s for p in pages), 4)),
    )


def to_blocks(grounding: Grounding, width: int, height: int) -> tuple[Block, ...]:
    return tuple(
        Block(index=i, label=b.label, content=b.content, grounded=b.grounded, truncated=b.truncated,
              boxes=tuple(_pixel_box(nb.to_pixels(width, height), (nb.x1, nb.y1, nb.x2, nb.y2))
                          for nb in b.boxes))
        for i, b in enumerate(grounding.blocks))


def figure_name(page: int, k: int) -> str:
    return f"page-{page}-figure-{k}.png"


def crop_figures(image: Image.Image, blocks: tuple[Block, ...], page: int) -> tuple[Figure, ...]:
    """PNG crops of the `image` blocks, named as the markdown links them."""
    figures = []
    k = 0
    for block in blocks:
        if block.label != FIGURE_LABEL or not block.grounded:
            continue
        k += 1
        for box in block.boxes[:1]:
            left, top = min(round(box.x1), image.width - 1), min(round(box.y1), image.height - 1)
            crop = image.crop((left, top, max(left + 1, round(box.x2)), max(top + 1, round(box.y2))))
            figures.append(Figure(name=figure_name(page, k), block_index=block.index, box=box,
                                  png_base64=png_base64(crop)))
    return tuple(figures)


def annotate_page(image: Image.Image, blocks: tuple[Block, ...]) -> str:
    """The page with every box and its label drawn, as base64 PNG."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for block in blocks:
        colour = _ANNOTATION_COLOURS.get(block.label, "red")
        for box in block.boxes:
            draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=3)
            draw.text((box.x1 + 3, max(0.0, box.y1 - 12)), block.label[:40], fill=colour)
    return png_base64(canvas)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pixel_box(pixels: tuple[float, float, float, float], norm: tuple[int, int, int, int]) -> Box:
    return Box(x1=pixels[0], y1=pixels[1], x2=pixels[2], y2=pixels[3], norm=norm)


def _polygon(box: Box) -> tuple[tuple[float, float], ...]:
    """PaddleOCR's 4-point box, clockwise from top-left."""
    return ((box.x1, box.y1), (box.x2, box.y1), (box.x2, box.y2), (box.x1, box.y2))
