import { strFromU8, unzipSync } from "fflate";
import { describe, expect, it } from "vitest";
import type { DocumentOutput } from "../src/api/protocol";
import { documentDocx, pngSize, xmlSafe } from "../src/export/docx";
import { exportName } from "../src/export/download";
import { splitHtmlTables } from "../src/export/htmlTable";
import { documentJson } from "../src/export/json";
import { PAGE_SPLIT, documentMarkdown, type PageForExport } from "../src/export/markdown";
import { createMarkdownIt } from "../src/render/markdown";
import type { DocRecord, PageRecord } from "../src/state/db";
import { documentOutput } from "./standin";

// A real 2x1 PNG (IHDR width 2, height 1), small enough to inline.
const PNG_2X1 =
  "iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAEElEQVR4nGP4z8DAwMDAAAAMAQH/1zqsVQAAAABJRU5ErkJggg==";

function page(index: number, status: PageRecord["status"], extra: Partial<PageRecord> = {}): PageRecord {
  return { id: `d-${index}`, docId: "d", index, status, ...extra };
}

function done(index: number, markdown: string, extra: Record<string, unknown> = {}): PageForExport {
  return { page: page(index, "done"), output: documentOutput(markdown, extra) };
}

const DOC: DocRecord = {
  id: "d", name: "report.pdf", kind: "pdf", size: 1, createdAt: 0, task: "markdown", mode: "gundam", dpi: 144, pageCount: 3, state: "ready",
};

async function docxParts(title: string, pages: PageForExport[]): Promise<Record<string, Uint8Array>> {
  const blob = await documentDocx(title, pages);
  return unzipSync(new Uint8Array(await blob.arrayBuffer()));
}

/** The text of every <w:t> run of a document.xml, entities decoded, joined. */
function wordText(xml: string): string {
  return [...xml.matchAll(/<w:t(?: [^>]*)?>([^<]*)<\/w:t>/g)]
    .map((match) => match[1])
    .join("")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, "&");
}

describe("markdown export", () => {
  it("joins the pages with the worker's page separator, so part N is page N", () => {
    const text = documentMarkdown([done(1, "# One"), done(2, "Two"), done(3, "Three")]);
    expect(text).toBe("# One\n\n<--- Page Split --->\n\nTwo\n\n<--- Page Split --->\n\nThree");
    expect(text.split(PAGE_SPLIT)).toEqual(["# One", "Two", "Three"]);
  });

  it("embeds each figure the page links as a PNG data URL", () => {
    const text = documentMarkdown([
      done(1, "Before\n\n![image](page-1-figure-1.png)\n\nAfter", { figures: [{ name: "page-1-figure-1.png", png_base64: PNG_2X1 }] }),
    ]);
    expect(text).toBe(`Before\n\n![image](data:image/png;base64,${PNG_2X1})\n\nAfter`);
  });

  it("keeps the place of failed and unfinished pages with a comment saying why", () => {
    const text = documentMarkdown([
      done(1, "ok"),
      { page: page(2, "failed", { error: { code: "invalid_image", message: "bad -- bytes" } }) },
      { page: page(3, "queued") },
    ]);
    expect(text.split(PAGE_SPLIT)).toEqual(["ok", "<!-- page 2: failed (invalid_image: bad - bytes) -->", "<!-- page 3: not converted yet -->"]);
  });

  it("takes the ocr task's text when there is no markdown", () => {
    const output: DocumentOutput = { type: "document", text: "plain", pages: [{ page: 1, text: "plain words" }] };
    expect(documentMarkdown([{ page: page(1, "done"), output }])).toBe("plain words");
  });
});

describe("docx export", () => {
  it("writes headings, styled runs, lists and page breaks between pages", async () => {
    const parts = await docxParts("report.pdf", [
      done(1, "# Annual Report\n\nSome **bold** and *italic* text.\n\n- first\n- second"),
      done(2, "## Part two\n\n1. one\n2. two"),
      done(3, "Closing words."),
    ]);
    const xml = strFromU8(parts["word/document.xml"]);
    expect(xml.match(/<w:br w:type="page"\/>/g)).toHaveLength(2);
    expect(xml).toContain('<w:pStyle w:val="Heading1"/>');
    expect(xml).toContain('<w:pStyle w:val="Heading2"/>');
    expect(xml).toMatch(/<w:b\/>[\s\S]*?<w:t xml:space="preserve">bold<\/w:t>/);
    expect(xml).toMatch(/<w:i\/>[\s\S]*?<w:t xml:space="preserve">italic<\/w:t>/);
    expect(xml).toContain("<w:numPr>"); // bullets
    const text = wordText(xml);
    for (const expected of ["Annual Report", "first", "second", "Part two", "1. one", "2. two", "Closing words."]) expect(text).toContain(expected);
    expect(strFromU8(parts["docProps/core.xml"])).toContain("<dc:title>report.pdf</dc:title>");
  });

  it("turns the model's HTML tables into Word tables, keeping column and row spans", async () => {
    const table = '<table><tr><th colspan="2">Quarter</th></tr><tr><td rowspan="2">Q1</td><td>10 &amp; 12</td></tr><tr><td>11</td></tr></table>';
    const parts = await docxParts("t", [done(1, `Revenue\n\n${table}\n\n| a | b |\n|---|---|\n| 1 | 2 |`)]);
    const xml = strFromU8(parts["word/document.xml"]);
    expect(xml.match(/<w:tbl>/g)).toHaveLength(2);
    expect(xml).toContain('<w:gridSpan w:val="2"/>');
    expect(xml).toContain('<w:vMerge w:val="restart"/>');
    const text = wordText(xml);
    for (const expected of ["Revenue", "Quarter", "Q1", "10 & 12", "11", "a", "b", "1", "2"]) expect(text).toContain(expected);
  });

  it("embeds figures as pictures and keeps LaTeX equations as text", async () => {
    const parts = await docxParts("f", [
      done(1, "Energy \\(E = mc^2\\)\n\n![image](page-1-figure-1.png)", { figures: [{ name: "page-1-figure-1.png", png_base64: PNG_2X1 }] }),
    ]);
    const media = Object.keys(parts).filter((path) => path.startsWith("word/media/"));
    expect(media).toHaveLength(1);
    expect(pngSize(parts[media[0]])).toEqual({ width: 2, height: 1 });
    expect(wordText(strFromU8(parts["word/document.xml"]))).toContain("\\(E = mc^2\\)");
  });

  it("drops the control characters a runaway page can emit, which XML forbids", async () => {
    const parts = await docxParts("x", [done(1, "ok\u001e_i\u0008Å\uFFFE")]);
    const xml = strFromU8(parts["word/document.xml"]);
    expect(xml).not.toMatch(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/);
    expect(wordText(xml)).toContain("ok_iÅ");
  });

  it("writes the ocr task's text line by line, without reading it as markdown", async () => {
    const output: DocumentOutput = { type: "document", text: "", pages: [{ page: 1, text: "# not a heading\n*not italic*" }] };
    const xml = strFromU8((await docxParts("o", [{ page: page(1, "done"), output }]))["word/document.xml"]);
    expect(xml).not.toContain("Heading1");
    expect(wordText(xml)).toContain("# not a heading*not italic*");
  });

  it("marks failed pages in place", async () => {
    const failed = { page: page(2, "failed", { error: { code: "invalid_image", message: "x" } }) };
    const xml = strFromU8((await docxParts("m", [done(1, "one"), failed]))["word/document.xml"]);
    expect(wordText(xml)).toContain("[page 2: failed, invalid_image]");
  });
});

describe("xmlSafe", () => {
  it("keeps tabs, newlines, emoji and CJK, and drops lone surrogates", () => {
    expect(xmlSafe("a\tb\nc 表 😀")).toBe("a\tb\nc 表 😀");
    expect(xmlSafe("x\uD800y\uDC00z")).toBe("xyz");
  });
});

describe("splitHtmlTables", () => {
  it("reads cells, spans and entities, and the text around the table", () => {
    const parts = splitHtmlTables('<p>Before</p><table><tr><td colspan="3">A&nbsp;B</td></tr><tr><th>x<br>y</th></tr></table>after &lt;3');
    expect(parts).toEqual([
      { kind: "text", text: "Before" },
      {
        kind: "table",
        rows: [[{ text: "A\u00a0B", header: false, colSpan: 3, rowSpan: 1 }], [{ text: "x\ny", header: true, colSpan: 1, rowSpan: 1 }]],
      },
      { kind: "text", text: "after <3" },
    ]);
  });

  it("keeps what arrived of a table cut off mid-cell (a runaway page)", () => {
    expect(splitHtmlTables("<table><tr><td>1</td><td>2")).toEqual([
      { kind: "table", rows: [[{ text: "1", header: false, colSpan: 1, rowSpan: 1 }, { text: "2", header: false, colSpan: 1, rowSpan: 1 }]] },
    ]);
  });
});

describe("json export", () => {
  it("keeps each page job's output verbatim, with the page's status and error", () => {
    const outputs = [done(1, "one"), { page: page(2, "failed", { error: { code: "invalid_image", message: "m" } }) }];
    const parsed = JSON.parse(documentJson(DOC, outputs));
    expect(parsed).toMatchObject({ name: "report.pdf", task: "markdown", mode: "gundam", dpi: 144, page_count: 2 });
    expect(parsed.pages[0]).toEqual({ page: 1, status: "done", output: outputs[0].output });
    expect(parsed.pages[1]).toEqual({ page: 2, status: "failed", error: { code: "invalid_image", message: "m" }, output: null });
  });
});

describe("markdown reading", () => {
  it("keeps LaTeX delimiters that plain markdown would unescape", () => {
    const html = createMarkdownIt().render("Area \\[ \\pi r^2 \\] and \\(x\\)");
    expect(html).toContain('<code class="math">\\[ \\pi r^2 \\]</code>');
    expect(html).toContain('<code class="math">\\(x\\)</code>');
  });
});

describe("exportName", () => {
  it("replaces the document's extension", () => {
    expect(exportName("scan.page.pdf", "md")).toBe("scan.page.md");
    expect(exportName("notes", "docx")).toBe("notes.docx");
    expect(exportName(".hidden", "json")).toBe(".hidden.json");
  });
});
