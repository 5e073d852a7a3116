"""The grounding parser on real DeepSeek-OCR output: the corpus in tests/data/real-outputs.

Each file there is a byte-for-byte copy of a raw model output from a public repository; INDEX.md
beside them names the source, commit, prompt and what each page shows. Nobody wrote them by hand.

The oracle is the official post-processing (DeepSeek-OCR's `run_dpsk_ocr_image.py` and
`run_dpsk_ocr_pdf.py`), re-implemented in `official_markdown` with the same rule:

- find every `<|ref|>(.*?)<|/ref|><|det|>(.*?)<|/det|>` (non-greedy, across lines);
- a match that contains `<|ref|>image<|/ref|>` becomes `![](images/{page}_{k}.jpg)` plus a newline;
- every other match is deleted, and after each deletion `\\coloneqq` -> `:=`, `\\eqqcolon` -> `=:`,
  four newlines -> two, three newlines -> two;
- everything else (text outside the matches, and any tag that no match took) stays as written;
- the PDF script drops a page whose output has no end-of-sequence token (`SKIP_REPEAT`).

Its non-greedy match runs from a malformed tag to the next well-formed `<|/ref|><|det|>` or
`<|/det|>`, so it deletes content (04, 05, 06, 08, 10, 11, 12, 13), and it leaves the syntax of
unmatched tags in the text (06's last `<|ref|>equation<|/ref|>[150, 870, 504, 898]]<|/det|>`, 12's
last `<|ref|>text`). The test asks our
markdown to hold every word the official output keeps, less that leaked syntax (tags, the label
they enclose, and the coordinates of a det), which is not page text; for a cut page (07, 08, 09: no
end of sequence, so the PDF script would drop it whole) it asks for the words before the unfinished
last block. On top of that, each page must hold the content the official rule loses (RECOVERED).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from worker.grounding import COORD_MAX, FIGURE_LABEL, NormBox, parse_grounding, render_markdown

CORPUS = Path(__file__).resolve().parent / "data" / "real-outputs"
FILES = sorted(CORPUS.glob("*.txt"))
# Pages the INDEX records as cut off (runaway or max tokens, no end of sequence).
CUT_PAGES = {"07", "08", "09"}
# Malformed tags each page has (INDEX "contents"), each mended by the parser.
REPAIRS = {"04": 2, "05": 2, "06": 3, "08": 1, "11": 4, "12": 2, "13": 1}
# Source A pages are PDF pages rendered at 220 dpi (INDEX): A4 portrait, about 1819x2573 px.
PAGE_SIZE = (1819, 2573)
# Content the official rule deletes along with a malformed tag, that our markdown must hold.
RECOVERED = {
    "04": ["\\[y = \\frac{L - 3x}{6} = \\frac{L}{6} - \\frac{x}{2}.\\]",
           "\\[L = f(x; y) = \\sqrt{y - x^2} \\quad \\text{mit } L \\in \\mathbb{R}.\\]"],
    "05": ["of the text is too long to fit in the image. \n\nb)"],
    "06": ["f'(x) &= (\\log_a(bx+c))'", "= \\frac{1}{x}.\n\\]"],
    "08": ["\\[ \\underline{\\nabla} V = \\begin{bmatrix} V_{,1} \\\\ V_{,2} \\end{bmatrix}"],
    "10": ['"__"__'],
    "11": ["= -\\sinh(2 - x)\\).", "= 2x \\sinh(x^2 - 1)\\).", "= 6x^2 \\cdot (1 - \\coth^2(x^3))\\).",
           "= (1 - \\coth^2(5 - 3x)) \\cdot (0 - 3)\\)"],
    "12": ["{\\frac{1}{3}} = 2 \\lim_{n \\to \\infty}", "= 2. \\quad (63)\n\\]"],
    "13": ["f^{-1}([-1,0]) &= \\emptyset \\quad \\text{und} \\quad f^{-1}([0,2]) = ]-\\infty,1]. \\tag{37}"],
}
_OFFICIAL_MATCH = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)
_COORDINATES = re.compile(r"\[\s*-?\d+(?:\.\d+)?\s*(?:,\s*-?\d+(?:\.\d+)?\s*){3}\]")
# Grounding syntax the official output leaks when a tag is malformed: not page text.
_LEAKED_SYNTAX = re.compile(
    r"<\|ref\|>[^\n<]*?<\|/ref\|>"  # a ref and the label it encloses
    r"|<\|ref\|>[a-z_]+"  # a ref whose close is missing, and its label
    r"|(?:<\|det\|>)?[ \t]*\[[-\d .,\[\]]*\][ \t]*<\|/det\|>"  # a det's coordinates
    r"|<\|/?(?:ref|det)\|>")  # any other tag
_OFFICIAL_FIGURE = re.compile(r"!\[\]\(images/\d+_\d+\.jpg\)")

pytestmark = pytest.mark.skipif(not FILES, reason=f"no real outputs in {CORPUS}")


def official_markdown(raw: str, page: int = 0) -> str:
    """The official post-processing of one page (see the module docstring), figure links included."""
    matches = [m[0] for m in _OFFICIAL_MATCH.findall(raw)]
    figures = [m for m in matches if "<|ref|>image<|/ref|>" in m]
    others = [m for m in matches if "<|ref|>image<|/ref|>" not in m]
    text = raw
    for k, match in enumerate(figures):
        text = text.replace(match, f"![](images/{page}_{k}.jpg)\n")
    for match in others:
        text = (text.replace(match, "").replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
                .replace("\n\n\n\n", "\n\n").replace("\n\n\n", "\n\n"))
    return text


def words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text))


def page_id(path: Path) -> str:
    return path.name[:2]


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # as the model wrote it: no newline translation


def our_markdown(raw: str) -> str:
    return render_markdown(parse_grounding(raw), figure_name=lambda k: f"page-1-figure-{k}.png")


def test_corpus_is_complete_and_recorded():
    assert len(FILES) == 18
    index = (CORPUS / "INDEX.md").read_text(encoding="utf-8")
    assert all(path.name in index for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_markdown_keeps_every_word_the_official_output_keeps(path):
    raw = read(path)
    if page_id(path) in CUT_PAGES:
        raw = raw[:raw.rindex("<|ref|>")]
    official = _LEAKED_SYNTAX.sub(" ", _OFFICIAL_FIGURE.sub(" ", official_markdown(raw)))
    missing = words(official) - words(our_markdown(read(path)))
    assert not missing, f"words the official output keeps but ours lost: {dict(missing)}"


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_markdown_holds_the_content_the_official_rule_loses(path):
    markdown = our_markdown(read(path))
    for snippet in RECOVERED.get(page_id(path), []):
        assert snippet in markdown
        assert snippet not in official_markdown(read(path))


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_no_coordinates_or_tags_in_markdown(path):
    markdown = our_markdown(read(path))
    assert not _COORDINATES.search(markdown)
    assert "<|" not in markdown and "|>" not in markdown


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_cut_pages_are_flagged_and_their_runaway_dropped(path):
    grounding = parse_grounding(read(path))
    cut = page_id(path) in CUT_PAGES
    assert grounding.truncated is cut
    assert [b.truncated for b in grounding.blocks] == [cut and b is grounding.blocks[-1] for b in grounding.blocks]
    if cut:
        # The last block is the one whose det ran away (or was cut mid-box): boxless, no text.
        assert grounding.blocks[-1].label == "equation"
        assert (grounding.blocks[-1].content, grounding.blocks[-1].boxes) == ("", ())
        assert len(our_markdown(read(path))) < 4000


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_mid_page_repairs_are_counted(path):
    grounding = parse_grounding(read(path))
    assert grounding.repairs == REPAIRS.get(page_id(path), 0)
    assert (grounding.repairs > 0) == any(b.repaired for b in grounding.blocks)


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_boxes_lie_in_the_page(path):
    grounding = parse_grounding(read(path))
    width, height = PAGE_SIZE
    for block in grounding.blocks:
        for box in block.boxes:
            assert 0 <= box.x1 <= box.x2 <= COORD_MAX and 0 <= box.y1 <= box.y2 <= COORD_MAX
            x1, y1, x2, y2 = box.to_pixels(width, height)
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


@pytest.mark.parametrize("path", FILES, ids=page_id)
def test_every_figure_is_linked(path):
    raw = read(path)
    grounding = parse_grounding(raw)
    figures = sum(1 for b in grounding.blocks if b.label == FIGURE_LABEL and b.grounded)
    links = re.findall(r"!\[image\]\(page-1-figure-(\d+)\.png\)", our_markdown(raw))
    assert links == [str(k) for k in range(1, figures + 1)]
    assert figures >= len(_OFFICIAL_FIGURE.findall(official_markdown(raw)))


def test_det_without_opener_keeps_its_box():
    """06: `<|ref|>equation<|/ref|>[150, 533, 789, 620]]<|/det|>` three times."""
    grounding = parse_grounding(read(CORPUS / "06-v1-det-open-tag-missing.txt"))
    boxed = {b.boxes for b in grounding.blocks if b.repaired}
    assert boxed == {(NormBox(x1=150, y1=533, x2=789, y2=620),), (NormBox(x1=150, y1=668, x2=732, y2=708),),
                     (NormBox(x1=150, y1=870, x2=504, y2=898),)}
    assert all(b.label == "equation" and b.content.startswith("\\[") for b in grounding.blocks if b.repaired)


def test_ref_without_close_keeps_label_and_content():
    """04: `<|ref|>equation` + newline + LaTeX, no `<|/ref|>`, no det; 12: the label holds the text."""
    four = parse_grounding(read(CORPUS / "04-v1-ref-without-close-or-det.txt"))
    mended = [b for b in four.blocks if b.repaired]
    assert [(b.label, b.boxes, b.content[:10]) for b in mended] == [("equation", (), "\\[y = \\fra"),
                                                                      ("equation", (), "\\[L = f(x;")]
    last = parse_grounding(read(CORPUS / "12-v1-ref-label-swallows-table.txt")).blocks[-1]
    assert (last.label, last.content[:22], last.repaired) == ("text", "</td><td>Variante 1: M", True)


def test_det_holding_an_equation_gives_content_not_boxes():
    """11: `<|det|>[0.5]\\(\\frac{f'(x)}{x}\\) = ...` never closed, four times: the box debris goes."""
    grounding = parse_grounding(read(CORPUS / "11-v1-det-holds-non-box.txt"))
    mended = [b for b in grounding.blocks if b.repaired]
    assert len(mended) == 4
    assert all(b.boxes == () and b.content.startswith("\\(\\frac{f'(x)}{x}\\) = ") for b in mended)


def test_centered_captions_stay_as_the_official_output_has_them():
    markdown = our_markdown(read(CORPUS / "02-v1-images-captions-table.txt"))
    assert "<center>3. Spezielle Werte der trigonometrischen Funktionen</center>" in markdown
