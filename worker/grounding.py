"""Grounding output -> ordered blocks with boxes, and clean markdown.

DeepSeek-OCR writes `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` before each
block, the block's content following on the next line (markdown prompt); with "OCR this image."
the ref holds the text line itself. Coordinates are integers 0..999 over the unpadded input image.

`parse_grounding(text) -> Grounding` is total: it never raises on model output. Real outputs break
the tags in many ways (see README, "Layout output", and the corpus in tests/data/real-outputs); the
rule throughout is that what a malformed tag holds is kept: a box stays a box even without its
opener, text stays content even inside a det or a label. Only the tail of an output cut inside a
det (a runaway) is dropped. `Grounding.truncated` says the output ended inside a tag (a cut);
`Grounding.repairs` counts the malformed tags mended, none of which lost content.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

REF_OPEN, REF_CLOSE = "<|ref|>", "<|/ref|>"
DET_OPEN, DET_CLOSE = "<|det|>", "<|/det|>"
COORD_MAX = 999
LOOSE_LABEL = "text"
FIGURE_LABEL = "image"
# The official PDF script writes each page followed by "\n\n<--- Page Split --->\n". We keep the
# same marker line so users can split both outputs the same way, but join rather than trail (no
# marker after the last page) and put a blank line after it too: without one, a renderer glues the
# marker and the next page's first line into one paragraph.
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"
# The official post-processing rewrites these two mathtools macros; users diff our markdown against
# the official output, so the markdown does the same. Block content keeps the model's text.
OFFICIAL_REWRITES = (("\\coloneqq", ":="), ("\\eqqcolon", "=:"))
# Labels DeepSeek-OCR uses for layout blocks; any other label on a grounded block with no content is
# the text itself ("OCR this image." puts each line in its ref).
KNOWN_LAYOUT_LABELS = frozenset({
    "text", "title", "sub_title", "image", "image_caption", "table", "table_caption", "equation",
    "figure", "figure_caption", "header", "footer", "page_number", "list", "code", "reference",
})

_TAGS = (REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE)
_ANY_TAG = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
# What a det holds before any content: bracket groups of numbers. Covers well-formed box lists and
# the debris the model leaves when it starts a box and then writes the equation into the det
# instead ("[0.5]", "[1][2][3]", '["]' in real outputs).
_BOX_SYNTAX = re.compile(r"(?:[\s,]*\[+[-\d\s.,\"']*\]+)*")
# A det whose `<|det|>` opener is missing: box syntax on the ref's own line, straight after
# `<|/ref|>` (real: `<|/ref|>[150, 533, 789, 620]]<|/det|>`). Content starts on the next line.
_OPENERLESS_DET = re.compile(r"[ \t]*(\[[-\d .,\[\]]{0,400}\])[ \t]*(?:<\|/det\|>|(?=\n)|$)")
# A det left inside content (its ref opener lost): the tags go as strays, and so must its boxes, or
# the coordinates would show in the markdown. Bounded: box lists are short.
_DET_REMNANT = re.compile(r"<\|det\|>[ \t]*\[[-\d .,\[\]]{0,400}\][ \t]*(?:<\|/det\|>)?"
                          r"|\[[-\d .,\[\]]{0,400}\][ \t]*<\|/det\|>")
# The label of a ref whose `<|/ref|>` is missing: a lower-case word, the rest being content.
_LABEL_WORD = re.compile(r"[ \t]*([a-z_]+)(?![\w])")


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
    truncated: bool  # the output ended inside a tag of this block
    repaired: bool = False  # a malformed tag of this block was mended


class Grounding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    blocks: tuple[ParsedBlock, ...]
    truncated: bool  # the output ended inside a tag: cut (usually a runaway at max_tokens)
    repairs: int = 0  # malformed tags mended (page content kept); a cut at the end is `truncated`


def parse_grounding(text: str) -> Grounding:
    """Split model output into blocks. Total: any string gives a `Grounding`."""
    text, cut = _drop_partial_tag(text)
    blocks: list[ParsedBlock] = []
    repairs = 0
    pieces = text.split(REF_OPEN)
    loose, strays = _clean(pieces[0])
    repairs += strays
    if loose:
        blocks.append(ParsedBlock(label=LOOSE_LABEL, content=loose, boxes=(), grounded=False,
                                  truncated=cut and len(pieces) == 1))
    for k, piece in enumerate(pieces[1:], start=1):
        at_end = k == len(pieces) - 1
        block, mended, cut_here = _parse_ref_piece(piece, at_end=at_end)
        repairs += mended
        cut = cut or cut_here
        if block is not None:
            blocks.append(block.model_copy(update={"truncated": True}) if at_end and cut else block)
    return Grounding(blocks=tuple(blocks), truncated=cut, repairs=repairs)


def _parse_ref_piece(piece: str, *, at_end: bool) -> tuple[ParsedBlock | None, int, bool]:
    """One `<|ref|>`-opened piece (up to the next `<|ref|>`): its block (None for an empty ref), the
    number of malformed tags mended, and whether the output was cut inside one of its tags.
    `at_end`: nothing follows this piece, so a tag left open here may have been cut."""
    repairs = 0
    truncated = False
    lead = ""  # content that came before the det (a label that swallowed its block's text)
    if REF_CLOSE in piece:
        label, rest = piece.split(REF_CLOSE, 1)
    else:
        tag = _ANY_TAG.search(piece)
        region, rest = (piece[:tag.start()], piece[tag.start():]) if tag else (piece, "")
        word = _LABEL_WORD.match(region)
        after = region[word.end():] if word else ""
        if word and after.strip() and (word.group(1) in KNOWN_LAYOUT_LABELS or after.lstrip(" \t")[:1] == "\n"):
            # `<|ref|>equation\n\[...\]`, `<|ref|>text</td><td>...`: the label, then its content.
            label, lead = word.group(1), after
            repairs += 1
        elif at_end and not rest:
            label, truncated = region, True  # cut inside the label
        else:
            label = region
            repairs += 1
    boxes: tuple[NormBox, ...] = ()
    stripped = rest.lstrip()
    if stripped.startswith(DET_OPEN):
        body = stripped[len(DET_OPEN):]
        closed = DET_CLOSE in body
        det, rest = body.split(DET_CLOSE, 1) if closed else (body, "")
        syntax = _BOX_SYNTAX.match(det).group()
        boxes = tuple(_to_box(m) for m in _BOX.finditer(syntax))
        held = det[len(syntax):]
        if not closed and at_end and not (boxes and held.lstrip(" \t")[:1] == "\n"):
            # Cut inside the det, before its boxes were complete: a runaway (counting, "[underline[...")
            # or max_tokens mid-box. What it wrote there is noise.
            held, truncated = "", True
        elif not closed or held.strip():
            # The model wrote the block's text into the det (and often never closed it): content.
            rest = held + rest
            repairs += 1
    else:
        opener_missing = _OPENERLESS_DET.match(rest)
        if opener_missing and _BOX.search(opener_missing.group(1)):
            boxes = tuple(_to_box(m) for m in _BOX.finditer(opener_missing.group(1)))
            rest = rest[opener_missing.end():]
            repairs += 1
    label, label_strays = _clean(label)
    content, content_strays = _clean(lead + rest)
    repairs += label_strays + content_strays
    if not label and not content and not boxes:
        return None, repairs, truncated
    return ParsedBlock(label=label or LOOSE_LABEL, content=content, boxes=boxes, grounded=True,
                       truncated=truncated, repaired=repairs > 0), repairs, truncated


def _to_box(match: re.Match) -> NormBox:
    x1, y1, x2, y2 = (min(COORD_MAX, max(0, round(float(v)))) for v in match.groups())
    return NormBox(x1=min(x1, x2), y1=min(y1, y2), x2=max(x1, x2), y2=max(y1, y2))


def _clean(text: str) -> tuple[str, int]:
    """Text without stray grounding tags or surrounding whitespace, and how many tags were removed."""
    text, strays = _DET_REMNANT.subn("", text)
    while True:  # removing one tag can join the halves of another ("<|re<|det|>f|>")
        text, removed = _ANY_TAG.subn("", text)
        if not removed:
            return text.strip(), strays
        strays += removed


def _drop_partial_tag(text: str) -> tuple[str, bool]:
    """An output cut mid-tag ends in part of one ("<|re"): drop it and say the output was cut."""
    for tag in _TAGS:
        for size in range(len(tag) - 1, 1, -1):
            if text.endswith(tag[:size]):
                return text[:-size], True
    return text, False


def render_markdown(grounding: Grounding, figure_name) -> str:
    """Clean markdown: blocks in order, `image` blocks as links to their crops (named by
    `figure_name(k)`, k counted from 1) or dropped when `figure_name` is None; tables stay HTML,
    equations stay LaTeX. A grounded block with no content (OCR-lines output) contributes its label.

    `<center>...</center>` around captions stays: the official output keeps it, users compare with
    that, and it is valid inline HTML in markdown. `\\coloneqq`/`\\eqqcolon` become `:=`/`=:` as
    the official post-processing does (see OFFICIAL_REWRITES)."""
    parts: list[str] = []
    figure = 0
    for block in grounding.blocks:
        if block.label == FIGURE_LABEL and block.grounded:
            figure += 1
            if figure_name is not None:
                parts.append(f"![{FIGURE_LABEL}]({figure_name(figure)})")
        if block.content:
            parts.append(block.content)
        elif block.grounded and block.boxes and block.label not in KNOWN_LAYOUT_LABELS:
            parts.append(block.label)
    markdown = "\n\n".join(parts)
    for macro, official in OFFICIAL_REWRITES:
        markdown = markdown.replace(macro, official)
    return markdown
