"""The grounding parser: real output shapes, malformed output, and properties (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from worker.grounding import NormBox, parse_grounding, render_markdown
from worker.results import to_blocks

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
    assert not g.truncated


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
    assert g.truncated and g.blocks[-1].truncated
    assert g.blocks[-1].boxes == (NormBox(x1=10, y1=20, x2=30, y2=40),)


def test_truncated_inside_ref_and_half_tag():
    g = parse_grounding("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nSome text <|re")
    assert g.blocks[0].content == "Some text"
    g = parse_grounding("intro <|ref|>tit")
    assert [b.label for b in g.blocks] == ["text", "tit"] and g.truncated


def test_text_outside_any_ref_is_kept_ungrounded():
    g = parse_grounding("Loose preface\n<|ref|>title<|/ref|><|det|>[[1,2,3,4]]<|/det|>\n# T")
    assert (g.blocks[0].label, g.blocks[0].content, g.blocks[0].grounded) == ("text", "Loose preface", False)


def test_ref_without_det_and_stray_closing_tags():
    g = parse_grounding("<|ref|>text<|/ref|>\nplain <|/det|> words")
    assert g.blocks[0].boxes == () and g.blocks[0].content == "plain  words"


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
    assert not g.truncated
