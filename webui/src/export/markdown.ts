/**
 * Document -> one markdown file: the pages' results joined with the worker's own page separator, so
 * part N is page N. Figures are embedded as PNG data URLs (one self-contained file); a page without a
 * result keeps its place as an HTML comment saying why.
 */

import { pageContent, type DocumentOutput, type Figure } from "../api/protocol";
import type { PageRecord } from "../state/db";
import { figureDataUrl } from "../render/markdown";

export const PAGE_SPLIT = "\n\n<--- Page Split --->\n\n";

export interface PageForExport {
  page: PageRecord;
  output?: DocumentOutput;
}

/** One page's markdown with its figure links resolved to data URLs. */
export function pageMarkdown(output: DocumentOutput): string {
  const page = output.pages[0];
  if (!page) return "";
  return embedFigures(pageContent(page), page.figures ?? []);
}

export function embedFigures(markdown: string, figures: Figure[]): string {
  let result = markdown;
  for (const figure of figures) result = result.split(`](${figure.name})`).join(`](${figureDataUrl(figure)})`);
  return result;
}

export function documentMarkdown(pages: PageForExport[]): string {
  return pages.map(({ page, output }) => (page.status === "done" && output ? pageMarkdown(output) : placeholder(page))).join(PAGE_SPLIT);
}

function placeholder(page: PageRecord): string {
  if (page.status === "failed") return `<!-- page ${page.index}: failed (${page.error?.code ?? "unknown"}: ${commentSafe(page.error?.message ?? "")}) -->`;
  return `<!-- page ${page.index}: not converted yet -->`;
}

/** `--` cannot appear inside an HTML comment. */
function commentSafe(text: string): string {
  return text.replace(/--+/g, "-");
}
