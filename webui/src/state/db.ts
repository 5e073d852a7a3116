/**
 * The browser's store (IndexedDB through Dexie): documents, their pages, and per page the image sent,
 * a thumbnail and the job's output. Page records are small and all loaded at start; images, thumbnails
 * and outputs live in their own tables and are read one at a time, so hundreds of pages cost little memory.
 */

import Dexie, { type Table } from "dexie";
import type { DocumentOutput, Mode, PageFailure, Task } from "../api/protocol";

export type PageStatus = "rendering" | "queued" | "running" | "done" | "failed";

export interface DocRecord {
  id: string;
  name: string;
  kind: "pdf" | "image";
  size: number;
  createdAt: number;
  /** The settings the document was added with; its pages (and their retries) use them. */
  task: Task;
  mode: Mode;
  dpi: number;
  /** 0 until a PDF is opened. */
  pageCount: number;
  /** `opening`: a PDF whose pages are not all rendered yet; `failed`: it could not be opened. */
  state: "opening" | "ready" | "failed";
  error?: PageFailure;
}

export interface PageRecord {
  /** `${docId}-${index}` */
  id: string;
  docId: string;
  /** 1-based page number in the document. */
  index: number;
  status: PageStatus;
  width?: number;
  height?: number;
  hasThumb?: boolean;
  /** Set while a RunPod job is queued remotely, so a reload polls it instead of sending it again. */
  jobId?: string;
  jobBase?: string;
  error?: PageFailure;
  finishReason?: string;
  chars?: number;
  finishedAt?: number;
}

export interface BlobRow {
  key: string;
  blob: Blob;
}

export interface ResultRow {
  pageId: string;
  output: DocumentOutput;
}

export const DEFAULT_DB_NAME = "deepseek-ocr-webui";

export class OcrDatabase extends Dexie {
  documents!: Table<DocRecord, string>;
  pages!: Table<PageRecord, string>;
  /** The image each page job sends, keyed by page id. */
  images!: Table<BlobRow, string>;
  thumbs!: Table<BlobRow, string>;
  results!: Table<ResultRow, string>;
  /** A PDF's file, keyed by document id, kept until all its pages are rendered. */
  sources!: Table<BlobRow, string>;

  constructor(name = DEFAULT_DB_NAME) {
    super(name);
    this.version(1).stores({
      documents: "id, createdAt",
      pages: "id, docId, status",
      images: "key",
      thumbs: "key",
      results: "pageId",
      sources: "key",
    });
  }
}

export function pageId(docId: string, index: number): string {
  return `${docId}-${index}`;
}
