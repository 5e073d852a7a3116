/**
 * Document -> a Word file: each page's markdown becomes headings, paragraphs (bold, italic, code),
 * lists, tables (markdown pipe tables and the model's HTML tables, spans kept) and figures (the job's
 * PNG crops); equations stay LaTeX text; pages are separated by page breaks. The `ocr` task's plain
 * text is taken line by line, without reading it as markdown.
 *
 * Model output is untrusted text: characters XML 1.0 forbids (a runaway page can emit control bytes)
 * are dropped, or Word refuses to open the file.
 */

import {
  Document,
  HeadingLevel,
  ImageRun,
  Packer,
  PageBreak,
  Paragraph,
  Table,
  TableCell,
  TableRow,
  TextRun,
  WidthType,
  type ParagraphChild,
} from "docx";
import type { Token } from "markdown-it";
import { pageContent, type DocumentOutput, type Figure } from "../api/protocol";
import { base64ToBytes } from "../lib/base64";
import { createMarkdownIt } from "../render/markdown";
import { splitHtmlTables, type TableRows } from "./htmlTable";
import type { PageForExport } from "./markdown";

type Block = Paragraph | Table;

const HEADINGS = [
  HeadingLevel.HEADING_1,
  HeadingLevel.HEADING_2,
  HeadingLevel.HEADING_3,
  HeadingLevel.HEADING_4,
  HeadingLevel.HEADING_5,
  HeadingLevel.HEADING_6,
];
const MONO = "Courier New";
// 6.5 in of text width on a Letter or A4 page with 1 in margins, at docx's 96 px per inch.
const MAX_FIGURE_WIDTH = 624;
// Characters XML 1.0 does not allow, and UTF-16 halves without their other half.
const XML_INVALID = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

const md = createMarkdownIt();

export function xmlSafe(text: string): string {
  return text.replace(XML_INVALID, "");
}

export async function documentDocx(title: string, pages: PageForExport[]): Promise<Blob> {
  const children: Block[] = [];
  pages.forEach(({ page, output }, i) => {
    if (i > 0) children.push(new Paragraph({ children: [new PageBreak()] }));
    if (page.status === "done" && output) children.push(...pageBlocks(output));
    else children.push(new Paragraph({ children: [new TextRun({ text: xmlSafe(`[page ${page.index}: ${page.status === "failed" ? `failed, ${page.error?.code ?? "unknown"}` : "not converted yet"}]`), italics: true })] }));
  });
  const document = new Document({
    title: xmlSafe(title),
    creator: "DeepSeek-OCR web UI",
    sections: [{ children }],
  });
  return Packer.toBlob(document);
}

/** One page's job output -> Word blocks. */
export function pageBlocks(output: DocumentOutput): Block[] {
  const page = output.pages[0];
  if (!page) return [];
  if (page.markdown === undefined) return plainTextBlocks(pageContent(page));
  return markdownBlocks(page.markdown, page.figures ?? []);
}

function plainTextBlocks(text: string): Block[] {
  return text.split("\n").map((line) => new Paragraph({ children: [new TextRun(xmlSafe(line))] }));
}

export function markdownBlocks(markdown: string, figures: Figure[] = []): Block[] {
  const tokens = md.parse(markdown, {});
  const figuresByName = new Map(figures.map((figure) => [figure.name, figure]));
  const blocks: Block[] = [];
  const lists: { ordered: boolean; next: number }[] = [];
  let quoteDepth = 0;
  let itemStart = false;

  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    switch (token.type) {
      case "heading_open": {
        const level = Number(token.tag.slice(1)) - 1;
        blocks.push(new Paragraph({ heading: HEADINGS[level] ?? HeadingLevel.HEADING_6, children: inlineRuns(tokens[i + 1], figuresByName) }));
        i += 2;
        break;
      }
      case "paragraph_open": {
        const runs = inlineRuns(tokens[i + 1], figuresByName);
        const list = lists[lists.length - 1];
        if (list && itemStart) {
          // An item's first paragraph carries its bullet or number; later ones are indented under it.
          itemStart = false;
          blocks.push(
            list.ordered
              ? new Paragraph({ children: [new TextRun(`${list.next}. `), ...runs], indent: { left: 360 * lists.length } })
              : new Paragraph({ children: runs, bullet: { level: Math.min(lists.length - 1, 8) } }),
          );
        } else {
          const depth = lists.length + quoteDepth;
          blocks.push(new Paragraph({ children: runs, indent: depth > 0 ? { left: 360 * depth } : undefined }));
        }
        i += 2;
        break;
      }
      case "bullet_list_open":
        lists.push({ ordered: false, next: 1 });
        break;
      case "ordered_list_open":
        lists.push({ ordered: true, next: Number(token.attrGet("start") ?? 1) });
        break;
      case "bullet_list_close":
      case "ordered_list_close":
        lists.pop();
        break;
      case "list_item_open":
        itemStart = true;
        break;
      case "list_item_close": {
        const list = lists[lists.length - 1];
        if (list) list.next++;
        break;
      }
      case "blockquote_open":
        quoteDepth++;
        break;
      case "blockquote_close":
        quoteDepth--;
        break;
      case "fence":
      case "code_block":
        for (const line of token.content.replace(/\n$/, "").split("\n")) {
          blocks.push(new Paragraph({ children: [new TextRun({ text: xmlSafe(line), font: MONO })] }));
        }
        break;
      case "html_block":
        for (const part of splitHtmlTables(token.content)) {
          if (part.kind === "table") {
            const table = wordTable(part.rows);
            if (table) blocks.push(table);
          } else {
            for (const line of part.text.split("\n")) blocks.push(new Paragraph({ children: [new TextRun(xmlSafe(line))] }));
          }
        }
        break;
      case "table_open": {
        const { rows, end } = pipeTable(tokens, i);
        const table = wordTable(rows);
        if (table) blocks.push(table);
        i = end;
        break;
      }
      default:
        break;
    }
  }
  return blocks;
}

/** A markdown pipe table's tokens (from `table_open` at `start`) -> rows, and the index of `table_close`. */
function pipeTable(tokens: Token[], start: number): { rows: TableRows; end: number } {
  const rows: TableRows = [];
  let i = start + 1;
  for (; i < tokens.length && tokens[i].type !== "table_close"; i++) {
    const token = tokens[i];
    if (token.type === "tr_open") rows.push([]);
    if ((token.type === "th_open" || token.type === "td_open") && rows.length > 0) {
      rows[rows.length - 1].push({ text: tokens[i + 1]?.content ?? "", header: token.type === "th_open", colSpan: 1, rowSpan: 1 });
    }
  }
  return { rows, end: i };
}

function wordTable(rows: TableRows): Table | null {
  if (rows.length === 0) return null;
  return new Table({
    width: { size: 100, type: WidthType.PERCENTAGE },
    rows: rows.map(
      (cells) =>
        new TableRow({
          tableHeader: cells.every((cell) => cell.header),
          children: cells.map(
            (cell) =>
              new TableCell({
                columnSpan: cell.colSpan > 1 ? cell.colSpan : undefined,
                rowSpan: cell.rowSpan > 1 ? cell.rowSpan : undefined,
                children: cell.text.split("\n").map((line) => new Paragraph({ children: [new TextRun({ text: xmlSafe(line), bold: cell.header })] })),
              }),
          ),
        }),
    ),
  });
}

/** An inline token's children -> runs, following bold / italic / strike / code and images. */
function inlineRuns(inline: Token | undefined, figures: Map<string, Figure>): ParagraphChild[] {
  const runs: ParagraphChild[] = [];
  let bold = false;
  let italics = false;
  let strike = false;
  for (const child of inline?.children ?? []) {
    const style = { bold, italics, strike };
    switch (child.type) {
      case "text":
        runs.push(new TextRun({ text: xmlSafe(child.content), ...style }));
        break;
      case "math":
        runs.push(new TextRun({ text: xmlSafe(child.content), ...style, font: "Cambria Math" }));
        break;
      case "code_inline":
        runs.push(new TextRun({ text: xmlSafe(child.content), ...style, font: MONO }));
        break;
      case "strong_open":
      case "strong_close":
        bold = child.type === "strong_open";
        break;
      case "em_open":
      case "em_close":
        italics = child.type === "em_open";
        break;
      case "s_open":
      case "s_close":
        strike = child.type === "s_open";
        break;
      case "softbreak":
        runs.push(new TextRun({ text: " ", ...style }));
        break;
      case "hardbreak":
        runs.push(new TextRun({ break: 1 }));
        break;
      case "html_inline":
        if (/^<br\s*\/?>$/i.test(child.content)) runs.push(new TextRun({ break: 1 }));
        break;
      case "image": {
        const figure = figures.get(String(child.attrGet("src") ?? ""));
        const image = figure && figureRun(figure);
        if (image) runs.push(image);
        else if (child.content) runs.push(new TextRun({ text: xmlSafe(`[${child.content}]`), ...style }));
        break;
      }
      default:
        break;
    }
  }
  return runs;
}

function figureRun(figure: Figure): ImageRun | null {
  const data = base64ToBytes(figure.png_base64);
  const size = pngSize(data);
  if (!size) return null;
  const scale = Math.min(1, MAX_FIGURE_WIDTH / size.width);
  return new ImageRun({ type: "png", data, transformation: { width: Math.round(size.width * scale), height: Math.round(size.height * scale) } });
}

/** A PNG's width and height from its IHDR chunk (bytes 16..23), or null for anything else. */
export function pngSize(data: Uint8Array): { width: number; height: number } | null {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (data.length < 24 || signature.some((byte, i) => data[i] !== byte)) return null;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  return width > 0 && height > 0 ? { width, height } : null;
}
