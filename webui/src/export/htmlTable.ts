/**
 * The model's HTML tables (`<table><tr><td colspan="2">…</td></tr></table>`) -> rows of cells, for the
 * Word exporter. A small tolerant reader rather than a DOM parser, so the exporter runs the same in
 * the browser and in Node; it never throws on malformed markup (unclosed cells and rows are closed).
 */

export interface TableCell {
  text: string;
  header: boolean;
  colSpan: number;
  rowSpan: number;
}

export type TableRows = TableCell[][];

/** An HTML block -> its text before, between and after tables, and the tables, in order. */
export type HtmlPart = { kind: "text"; text: string } | { kind: "table"; rows: TableRows };

const TAG = /<\s*(\/?)\s*(table|tr|td|th)\b([^>]*)>/gi;
const NAMED: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

export function splitHtmlTables(html: string): HtmlPart[] {
  const parts: HtmlPart[] = [];
  let rows: TableRows | null = null;
  let row: TableCell[] | null = null;
  let cell: { start: number; header: boolean; colSpan: number; rowSpan: number } | null = null;
  let textStart = 0;

  const closeCell = (end: number) => {
    if (!cell) return;
    if (!row) {
      row = [];
      rows?.push(row);
    }
    row.push({ text: htmlToText(html.slice(cell.start, end)), header: cell.header, colSpan: cell.colSpan, rowSpan: cell.rowSpan });
    cell = null;
  };
  const pushText = (end: number) => {
    const text = htmlToText(html.slice(textStart, end));
    if (text.trim()) parts.push({ kind: "text", text });
  };

  for (const match of html.matchAll(TAG)) {
    const [whole, slash, rawName, attributes] = match;
    const name = rawName.toLowerCase();
    const at = match.index;
    const closing = slash === "/";
    if (name === "table" && !closing) {
      if (rows) continue; // a nested table is read as part of its cell's text
      pushText(at);
      rows = [];
      row = null;
      continue;
    }
    if (!rows) continue;
    if (name === "table") {
      closeCell(at);
      parts.push({ kind: "table", rows: rows.filter((r) => r.length > 0) });
      rows = null;
      row = null;
      textStart = at + whole.length;
    } else if (name === "tr") {
      closeCell(at);
      row = closing ? null : [];
      if (row) rows.push(row);
    } else if (closing) {
      closeCell(at);
    } else {
      closeCell(at);
      cell = { start: at + whole.length, header: name === "th", colSpan: span(attributes, "colspan"), rowSpan: span(attributes, "rowspan") };
    }
  }
  if (rows) {
    // Output cut inside a table (a runaway page): keep what arrived.
    closeCell(html.length);
    parts.push({ kind: "table", rows: rows.filter((r) => r.length > 0) });
  } else {
    pushText(html.length);
  }
  return parts;
}

function span(attributes: string, name: string): number {
  const match = new RegExp(`${name}\\s*=\\s*["']?(\\d+)`, "i").exec(attributes);
  const value = match ? Number(match[1]) : 1;
  return value >= 1 && value <= 1000 ? value : 1;
}

/** HTML fragment -> its text: `<br>` and block ends become newlines, other tags go, entities are decoded. */
export function htmlToText(html: string): string {
  const text = html
    .replace(/<br\s*\/?>/gi, "\n")
    .replace(/<\/(p|div|li|h[1-6])\s*>/gi, "\n")
    .replace(/<[^>]*>/g, "");
  return decodeEntities(text).replace(/[ \t]+\n/g, "\n").trim();
}

export function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (entity, body: string) => {
    if (body[0] === "#") {
      const code = body[1] === "x" || body[1] === "X" ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : entity;
    }
    return NAMED[body.toLowerCase()] ?? entity;
  });
}
