"""The grounding parser: output shapes, each malformed-tag rule, and properties (hypothesis).

The real outputs these rules come from are tested whole in test_real_outputs.py.
"""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from worker.grounding import PAGE_SEPARATOR, NormBox, parse_grounding, render_markdown
from worker.results import to_blocks

COORDINATES = re.compile(r"\[\s*-?\d+(?:\.\d+)?\s*(?:,\s*-?\d+(?:\.\d+)?\s*){3}\]")

MARKDOWN_OUTPUT = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 90]]<|/det|>\n# Annual Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 300]]<|/det|>\nRevenue grew by 12%.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 320, 500, 600]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 610, 500, 640]]<|/det|>\nFigure 1: Revenue\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 650, 900, 800]]<|/det|>\n<table><tr><td>Q1</td><td>5</td></tr></table>\n\n"
    "<|ref|>equation<|/ref|><|det|>[[100, 820, 900, 860]]<|/det|>\n\\[ E = mc^2 \\]\n"
)


def test_markdown_output_parses_into_ordered_blocks():
    g = parse_grounding(MARKDOWN_OUTPUT)
    assert [b.label for b in g.blocks] == ["title", "text", "image", "image_caption", "table", "equation"]
    assert g.blocks[0].content == "# Annual Report"
    assert g.blocks[0].boxes == (NormBox(x1=100, y1=50, x2=900, y2=90),)
    assert g.blocks[4].content.startswith("<table>")
    assert g.blocks[5].content == "\\[ E = mc^2 \\]"
    assert not g.truncated and g.repairs == 0 and not any(b.repaired for b in g.blocks)


def test_clean_markdown_links_figures_keeps_tables_and_equations():
    g = parse_grounding(MARKDOWN_OUTPUT)
    md = render_markdown(g, figure_name=lambda k: f"page-1-figure-{k}.png")
    assert "<|" not in md
    assert md.split("\n\n") == ["# Annual Report", "Revenue grew by 12%.", "![image](page-1-figure-1.png)",
                                "Figure 1: Revenue", "<table><tr><td>Q1</td><td>5</td></tr></table>",
                                "\\[ E = mc^2 \\]"]


def test_boxes_scale_to_pixels_of_the_original_image():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999], [499, 0, 999, 499]]<|/det|>\nx")
    blocks = to_blocks(g, width=2000, height=1000)
    assert len(blocks[0].boxes) == 2
    assert (blocks[0].boxes[0].x2, blocks[0].boxes[0].y2) == (2000.0, 1000.0)
    assert blocks[0].boxes[1].x1 == round(499 * 2000 / 999, 1) and blocks[0].boxes[1].norm == (499, 0, 999, 499)


def test_ocr_lines_shape_keeps_the_line_in_the_label():
    out = "<|ref|>Hello world<|/ref|><|det|>[[10, 10, 200, 40]]<|/det|>\n<|ref|>Second<|/ref|><|det|>[[10, 50, 90, 80]]<|/det|>"
    g = parse_grounding(out)
    assert [(b.label, b.content) for b in g.blocks] == [("Hello world", ""), ("Second", "")]
    assert render_markdown(g, figure_name=None) == "Hello world\n\nSecond"


def test_clamps_out_of_range_and_orders_inverted_boxes():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1200, -5, 300, 40.6]]<|/det|>\nbody")
    assert g.blocks[0].boxes == (NormBox(x1=300, y1=0, x2=999, y2=41),)


def test_truncated_inside_det():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40], [50, 6")
    assert g.truncated and g.blocks[-1].truncated and g.repairs == 0
    assert g.blocks[-1].boxes == (NormBox(x1=10, y1=20, x2=30, y2=40),)


def test_runaway_inside_det_at_the_end_is_dropped_and_flagged():
    # 07's shape: the det starts a box, then counts.
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nkept\n\n"
                        "<|ref|>equation<|/ref|><|det|>[[114, честь 2 2 2 3 3 3 4 4 4")
    assert g.truncated and g.blocks[-1].truncated and not g.blocks[0].truncated
    assert (g.blocks[-1].content, g.blocks[-1].boxes) == ("", ())
    assert render_markdown(g, figure_name=None) == "kept"


def test_det_missing_only_its_close_at_the_end_keeps_its_content():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]\nLast line.")
    assert [(b.content, b.boxes) for b in g.blocks] == [("Last line.", (NormBox(x1=1, y1=2, x2=3, y2=4),))]
    assert not g.truncated and g.repairs == 1


def test_truncated_inside_ref_and_half_tag():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nSome text <|re")
    assert g.blocks[0].content == "Some text"
    g = parse_grounding("intro <|ref|>tit")
    assert [b.label for b in g.blocks] == ["text", "tit"] and g.truncated and g.repairs == 0
    assert parse_grounding("intro <|ref|>").truncated
    assert parse_grounding("x <").blocks[0].content == "x <"  # a bare "<" is text, not half a tag


def test_text_outside_any_ref_is_kept_ungrounded():
    g = parse_grounding("Loose preface\n<|ref|>title<|/ref|><|det|>[[1,2,3,4]]<|/det|>\n# T")
    assert (g.blocks[0].label, g.blocks[0].content, g.blocks[0].grounded) == ("text", "Loose preface", False)


def test_ref_without_det_and_stray_closing_tags():
    g = parse_grounding("<|ref|>text<|/ref|>\nplain <|/det|> words")
    assert g.blocks[0].boxes == () and g.blocks[0].content == "plain  words"
    assert g.repairs == 1 and g.blocks[0].repaired and not g.truncated


def test_ref_without_close_keeps_its_label_and_text():
    # 04: `<|ref|>equation` + newline + LaTeX, no close, no det; 12: the text right after the label;
    # 05: a hallucinated label sentence, then the page's real "b)".
    g = parse_grounding("<|ref|>equation\n\\[y = 1\\]\n\n<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nnext\n\n"
                        "<|ref|>text</td><td>Variante 1</td></tr></table>")
    assert [(b.label, b.content, b.boxes != ()) for b in g.blocks] == [
        ("equation", "\\[y = 1\\]", False), ("text", "next", True),
        ("text", "</td><td>Variante 1</td></tr></table>", False)]
    assert g.repairs == 2 and not g.truncated
    g = parse_grounding("<|ref|>text of the text is too long to fit in the image. \n\nb) \n\n")
    assert (g.blocks[0].label, g.blocks[0].content) == ("text", "of the text is too long to fit in the image. \n\nb)")


def test_ref_without_close_before_its_det_keeps_the_label():
    g = parse_grounding("<|ref|>title<|det|>[[1, 2, 3, 4]]<|/det|>\n# T")
    assert [(b.label, b.content, len(b.boxes)) for b in g.blocks] == [("title", "# T", 1)] and g.repairs == 1


def test_det_without_opener_is_still_a_box():
    # 06: `<|ref|>equation<|/ref|>[150, 533, 789, 620]]<|/det|>`: opener and one `[` missing.
    g = parse_grounding("<|ref|>equation<|/ref|>[150, 533, 789, 620]]<|/det|>\n\\[ x \\]")
    assert g.blocks[0].boxes == (NormBox(x1=150, y1=533, x2=789, y2=620),)
    assert g.blocks[0].content == "\\[ x \\]" and g.repairs == 1
    assert render_markdown(g, figure_name=None) == "\\[ x \\]"


def test_det_holding_text_gives_content_and_drops_box_debris():
    # 11, 12: the det opened, box debris, then the equation, never closed; 08: no debris at all.
    for det_body, content in [("[0.5]\\(a\\) = b", "\\(a\\) = b"), ("[1][2][3]{\\frac{1}{3}} = 2", "{\\frac{1}{3}} = 2"),
                              ('["]\\(x\\)', "\\(x\\)"), (" [[0.5]\\(y\\)", "\\(y\\)"),
                              ("\\[ z \\]", "\\[ z \\]")]:
        g = parse_grounding(f"<|ref|>equation<|/ref|><|det|>{det_body}\n\n"
                            "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nn")
        assert [(b.content, b.boxes) for b in g.blocks][0] == (content, ()), det_body
        assert g.repairs == 1 and not g.truncated
    g = parse_grounding("<|ref|>equation<|/ref|><|det|>\\[ z \\]<|/det|>\n(1)")
    assert g.blocks[0].content == "\\[ z \\]\n(1)" and g.repairs == 1


def test_det_inside_content_leaves_no_coordinates():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\na\n\n"
                        "title<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>\nb")
    markdown = render_markdown(g, figure_name=None)
    assert "a" in markdown and "b" in markdown and not COORDINATES.search(markdown) and g.repairs == 2


def test_markdown_follows_the_official_rewrites_and_keeps_block_text():
    g = parse_grounding("<|ref|>equation<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n\\[ f \\coloneqq g, h \\eqqcolon k \\]")
    assert render_markdown(g, figure_name=None) == "\\[ f := g, h =: k \\]"
    assert g.blocks[0].content == "\\[ f \\coloneqq g, h \\eqqcolon k \\]"
    assert PAGE_SEPARATOR.strip() == "<--- Page Split --->"  # the official marker line


def test_text_after_an_image_tag_follows_its_link():
    g = parse_grounding("<|ref|>image<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n \n\n"
                        "<|ref|>image<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>\nlegend")
    assert render_markdown(g, figure_name=lambda k: f"f{k}.png") == "![image](f1.png)\n\n![image](f2.png)\n\nlegend"
    assert render_markdown(g, figure_name=None) == "legend"


def test_plain_output_without_tags():
    g = parse_grounding("Just text.\nSecond line.")
    assert len(g.blocks) == 1 and g.blocks[0].content == "Just text.\nSecond line."
    assert parse_grounding("").blocks == ()


TAGS = ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "[[", "]]", "[", "]", ", ", "\n",
        "-7", "1200", "0", "999", "42.5", "text", "image", "<|re", "<td>"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=8)), max_size=40))
def test_parser_is_total_and_boxes_are_valid(pieces):
    g = parse_grounding("".join(pieces))
    for block in g.blocks:
        assert block.label
        for box in block.boxes:
            assert 0 <= box.x1 <= box.x2 <= 999 and 0 <= box.y1 <= box.y2 <= 999
    assert g.repairs >= 0
    md = render_markdown(g, figure_name=lambda k: f"f{k}.png")
    assert "<|ref|>" not in md and "<|det|>" not in md and "<|/det|>" not in md


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["text", "title", "table"]),
                          st.lists(st.integers(0, 999), min_size=4, max_size=4),
                          st.text(alphabet="abc XYZ.", min_size=1, max_size=20).filter(str.strip)),
                min_size=1, max_size=8))
def test_well_formed_output_round_trips(blocks):
    out = "".join(f"<|ref|>{label}<|/ref|><|det|>[[{', '.join(map(str, box))}]]<|/det|>\n{content}\n\n"
                  for label, box, content in blocks)
    g = parse_grounding(out)
    assert [b.label for b in g.blocks] == [label for label, _, _ in blocks]
    assert [b.content for b in g.blocks] == [content.strip() for _, _, content in blocks]
    assert not g.truncated and g.repairs == 0


TAG_SLOTS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["text", "title", "table", "equation"]),
                          st.lists(st.integers(0, 999), min_size=4, max_size=4),
                          st.text(alphabet="abc XYZ.", min_size=1, max_size=20).filter(str.strip)),
                min_size=1, max_size=6),
       st.data())
def test_one_lost_tag_loses_no_content(blocks, data):
    """Real outputs lose each of the four tags (04, 06, 11, 13); no single loss may lose text."""
    tags = [["<|ref|>", label, "<|/ref|>", "<|det|>", f"[[{', '.join(map(str, box))}]]", "<|/det|>", f"\n{content}\n\n"]
            for label, box, content in blocks]
    block = data.draw(st.integers(0, len(tags) - 1))
    slot = data.draw(st.sampled_from([0, 2, 3, 5]))
    assert tags[block][slot] in TAG_SLOTS
    tags[block][slot] = ""
    g = parse_grounding("".join("".join(parts) for parts in tags))
    markdown = render_markdown(g, figure_name=None)
    for _, _, content in blocks:
        assert content.strip() in markdown
    assert not COORDINATES.search(markdown) and "<|" not in markdown
    assert g.repairs >= 1 and not g.truncated
