/** The export buttons: a document's pages and outputs from the store -> a downloaded file. */

import type { DocRecord } from "../state/db";
import type { Library } from "../state/library";
import { exportName, saveFile } from "./download";
import { documentJson } from "./json";
import { documentMarkdown } from "./markdown";

export type ExportFormat = "md" | "docx" | "json";

export async function exportDocument(library: Library, doc: DocRecord, format: ExportFormat): Promise<void> {
  const pages = await library.exportPages(doc.id);
  if (format === "md") {
    saveFile(new Blob([documentMarkdown(pages)], { type: "text/markdown;charset=utf-8" }), exportName(doc.name, "md"));
  } else if (format === "json") {
    saveFile(new Blob([documentJson(doc, pages)], { type: "application/json" }), exportName(doc.name, "json"));
  } else {
    // The Word writer is the largest module of the app: loaded on first use, not at start.
    const { documentDocx } = await import("./docx");
    saveFile(await documentDocx(doc.name, pages), exportName(doc.name, "docx"));
  }
}
