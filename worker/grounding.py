"""Grounding output -> ordered blocks with boxes, and clean markdown.

DeepSeek-OCR writes `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` before each
block, the block's content following on the next line (markdown prompt); with "OCR this image."
the ref holds the text line itself. Coordinates are integers 0..999 over the unpadded input image.

`parse_grounding(text) -> Grounding` is total: it never raises on model output. Truncated tags (a
runaway page cut mid-tag), boxes outside 0..999, inverted boxes, several boxes per ref and text
outside any ref all have a defined result (see README, "Layout output").
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

REF_OPEN, REF_CLOSE = "<|ref|>", "<|/ref|>"
DET_OPEN, DET_CLOSE = "<|det|>", "<|/det|>"
COORD_MAX = 999
LOOSE_LABEL = "text"
FIGURE_LABEL = "image"
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"
# Labels DeepSeek-OCR uses for layout blocks; any other label on a grounded block with no content is
# the text itself ("OCR this image." puts each line in its ref).
KNOWN_LAYOUT_LABELS = frozenset({
    "text", "title", "sub_title", "image", "image_caption", "table", "table_caption", "equation",
    "figure", "figure_caption", "header", "footer", "page_number", "list", "code", "reference",
})

_ANY_TAG = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_PARTIAL_TAG = re.compile(r"<\|?/?(?:r|re|ref|d|de|det|ref\||det\|)?$")


class NormBox(BaseModel):
    """A box in the model's 0..999 space, clamped and ordered (x1 <= x2, y1 <= y2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    x1: int
    y1: int
    x2: int
    y2: int

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        sx, sy = width / COORD_MAX, height / COORD_MAX
        return (round(self.x1 * sx, 1), round(self.y1 * sy, 1), round(self.x2 * sx, 1), round(self.y2 * sy, 1))


class ParsedBlock(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    content: str
    boxes: tuple[NormBox, ...]
    grounded: bool  # False for text the model wrote outside any ref
    truncated: bool  # a tag of this block was cut off


class Grounding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    blocks: tuple[ParsedBlock, ...]
    truncated: bool


def parse_grounding(text: str) -> Grounding:
    """Split model output into blocks. Total: any string gives a `Grounding`."""
    blocks: list[ParsedBlock] = []
    pieces = text.split(REF_OPEN)
    loose = _clean(pieces[0])
    if loose:
        blocks.append(ParsedBlock(label=LOOSE_LABEL, content=loose, boxes=(), grounded=False, truncated=False))
    for piece in pieces[1:]:
        block = _parse_ref_piece(piece)
        if block is not None:
            blocks.append(block)
    return Grounding(blocks=tuple(blocks), truncated=any(b.truncated for b in blocks))


def _parse_ref_piece(piece: str) -> ParsedBlock | None:
    """One `<|ref|>`-opened piece: label, optional det boxes, then content up to the next ref."""
    truncated = False
    if REF_CLOSE in piece:
        label, rest = piece.split(REF_CLOSE, 1)
    else:
        # Cut before `<|/ref|>`: the label runs to the next tag or the end of the output.
        cut = _ANY_TAG.search(piece)
        label, rest = (piece[:cut.start()], piece[cut.start():]) if cut else (piece, "")
        truncated = True
    label = _strip_partial_tag(_clean(label)) or LOOSE_LABEL
    boxes: tuple[NormBox, ...] = ()
    stripped = rest.lstrip()
    if stripped.startswith(DET_OPEN):
        body = stripped[len(DET_OPEN):]
        if DET_CLOSE in body:
            det, rest = body.split(DET_CLOSE, 1)
        else:
            det, rest = body, ""
            truncated = True
        boxes = tuple(_to_box(m) for m in _BOX.finditer(det))
    content = _strip_partial_tag(_clean(rest))
    if not label and not content and not boxes:
        return None
    return ParsedBlock(label=label, content=content, boxes=boxes, grounded=True, truncated=truncated)


def _to_box(match: re.Match) -> NormBox:
    x1, y1, x2, y2 = (min(COORD_MAX, max(0, round(float(v)))) for v in match.groups())
    return NormBox(x1=min(x1, x2), y1=min(y1, y2), x2=max(x1, x2), y2=max(y1, y2))


def _clean(text: str) -> str:
    """Content without stray grounding tags, leading newline or trailing space."""
    return _ANY_TAG.sub("", text).strip()


def _strip_partial_tag(text: str) -> str:
    """A runaway cut can end in half a tag ("<|re"): drop it."""
    return _PARTIAL_TAG.sub("", text).rstrip()


def render_markdown(grounding: Grounding, figure_name) -> str:
    """Clean markdown: blocks in order, `image` blocks as links to their crops (named by
    `figure_name(k)`, k counted from 1) or dropped when `figure_name` is None; tables stay HTML,
    equations stay LaTeX. A grounded block with no content (OCR-lines output) contributes its label."""
    parts: list[str] = []
    figure = 0
    for block in grounding.blocks:
        if block.label == FIGURE_LABEL and block.grounded:
            figure += 1
            if figure_name is not None:
                parts.append(f"![{FIGURE_LABEL}]({figure_name(figure)})")
            continue
        if block.content:
            parts.append(block.content)
        elif block.grounded and block.boxes and block.label not in KNOWN_LAYOUT_LABELS:
            parts.append(block.label)
    return "\n\n".join(parts)

