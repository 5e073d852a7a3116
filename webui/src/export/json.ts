/**
 * Document -> the raw JSON export: the document's settings and, per page, its status and the page
 * job's output exactly as the worker returned it (or the error that failed it).
 */

import type { DocRecord } from "../state/db";
import type { PageForExport } from "./markdown";

export function documentJson(doc: DocRecord, pages: PageForExport[]): string {
  return JSON.stringify(
    {
      name: doc.name,
      task: doc.task,
      mode: doc.mode,
      dpi: doc.kind === "pdf" ? doc.dpi : undefined,
      page_count: pages.length,
      pages: pages.map(({ page, output }) => ({
        page: page.index,
        status: page.status,
        error: page.error,
        output: output ?? null,
      })),
    },
    null,
    2,
  );
}
