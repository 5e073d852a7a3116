/**
 * The library: documents and their pages, kept in IndexedDB and mirrored in reactive memory for the
 * views, and the scheduler that sends queued pages as jobs, at most `concurrency()` at a time.
 *
 * A page goes rendering -> queued -> running -> done | failed. Every step is written to the store
 * before the next, so a reload resumes: PDFs finish rendering from their kept file, running pages are
 * queued again (or, for a RunPod job that was queued remotely, polled by its id), and done pages are
 * never sent again. Images, thumbnails and job outputs stay in the store and are read on demand.
 */

import { reactive, toRaw } from "vue";
import { JobClient, type Endpoint, type JobClientOptions } from "../api/client";
import type { DocumentOutput, Mode, PageFailure, Task } from "../api/protocol";
import { newId } from "../lib/ids";
import { RasterError, type PdfHandle, type Rasterizer } from "../pdf/rasterizer";
import { pageId, type DocRecord, type OcrDatabase, type PageRecord } from "./db";
import { runPageJob, type PageVerdict } from "./jobs";

export interface NewDocumentSettings {
  task: Task;
  mode: Mode;
  dpi: number;
}

export interface LibraryOptions {
  db: OcrDatabase;
  rasterizer: Rasterizer;
  /** Where jobs go now, or why nowhere yet; read each time a job starts. */
  target: () => { endpoint: Endpoint } | { problem: string };
  concurrency: () => number;
  clientOptions?: JobClientOptions;
  /** Transient-failure retries per job and the first wait between them (see jobs.ts). */
  retries?: number;
  retryDelayMs?: number;
}

export interface PageCounts {
  total: number;
  rendering: number;
  queued: number;
  running: number;
  done: number;
  failed: number;
}

export interface ExportPage {
  page: PageRecord;
  output?: DocumentOutput;
}

const PDF_MAGIC = "%PDF-";

/** The file's kind from its first bytes, as the worker decides it: never from its name or MIME type. */
export async function sniffKind(file: Blob): Promise<"pdf" | "image"> {
  const head = new Uint8Array(await file.slice(0, 1024).arrayBuffer());
  // PDF readers accept the header anywhere in the first KiB (some files start with junk).
  const text = String.fromCharCode(...head);
  return text.includes(PDF_MAGIC) ? "pdf" : "image";
}

export class Library {
  /** Documents, oldest first. */
  readonly docs: DocRecord[] = reactive([]);
  /** Pages of each document, in page order. */
  readonly pages: Record<string, PageRecord[]> = reactive({});
  /** Why jobs are not being sent, when they cannot be. */
  readonly status = reactive({ problem: "" });

  private readonly db: OcrDatabase;
  private readonly running = new Map<string, { controller: AbortController; done: Promise<void> }>();
  private rendering: Promise<void> = Promise.resolve();
  private loading: Promise<void> | null = null;
  private loaded = false;
  private closed = false;

  constructor(private readonly options: LibraryOptions) {
    this.db = options.db;
  }

  /** Reads the store, resumes unfinished rendering and starts sending queued pages (once). */
  load(): Promise<void> {
    this.loading ??= this.readStore();
    return this.loading;
  }

  private async readStore(): Promise<void> {
    const [docs, pages] = await Promise.all([this.db.documents.orderBy("createdAt").toArray(), this.db.pages.toArray()]);
    // A page that was running when the tab closed lost its answer: queue it again (a RunPod job id,
    // if any, is kept and polled instead of sending the page twice).
    const interrupted = pages.filter((page) => page.status === "running");
    for (const page of interrupted) page.status = "queued";
    await this.db.pages.bulkPut(interrupted);
    const byDoc: Record<string, PageRecord[]> = {};
    for (const page of pages) (byDoc[page.docId] ??= []).push(page);
    for (const list of Object.values(byDoc)) list.sort((a, b) => a.index - b.index);
    for (const doc of docs) this.pages[doc.id] = byDoc[doc.id] ?? [];
    this.docs.push(...docs);
    this.loaded = true;
    for (const doc of this.docs) if (doc.state === "opening") this.scheduleRender(doc);
    this.pump();
  }

  /** Adds files as documents (PDFs are rendered page by page in the background) and queues their pages. */
  async addFiles(files: File[], settings: NewDocumentSettings): Promise<DocRecord[]> {
    // Files dropped while the store is still being read join after what it holds, never twice.
    await this.loading;
    const added: DocRecord[] = [];
    for (const file of files) {
      const kind = await sniffKind(file);
      const doc: DocRecord = {
        id: newId(),
        name: file.name || (kind === "pdf" ? "document.pdf" : "image"),
        kind,
        size: file.size,
        // Files of one drop share a millisecond; the fraction keeps their order in the store's index.
        createdAt: Date.now() + added.length / 1000,
        task: settings.task,
        mode: settings.mode,
        dpi: settings.dpi,
        pageCount: kind === "pdf" ? 0 : 1,
        state: kind === "pdf" ? "opening" : "ready",
      };
      if (kind === "pdf") {
        await this.db.transaction("rw", this.db.documents, this.db.sources, async () => {
          await this.db.documents.put(doc);
          await this.db.sources.put({ key: doc.id, blob: file });
        });
        this.scheduleRender(this.insertDoc(doc, []));
      } else {
        const page: PageRecord = { id: pageId(doc.id, 1), docId: doc.id, index: 1, status: "queued" };
        await this.db.transaction("rw", this.db.documents, this.db.pages, this.db.images, async () => {
          await this.db.documents.put(doc);
          await this.db.pages.put(page);
          await this.db.images.put({ key: page.id, blob: file });
        });
        this.insertDoc(doc, [page]);
        void this.makeThumbnail(page.id, file);
      }
      added.push(doc);
    }
    this.pump();
    return added;
  }

  /** Sends a failed page again (with its document's settings); a page that failed to render is rendered again. */
  async retryPage(id: string): Promise<void> {
    const page = this.pageById(id);
    if (!page || page.status !== "failed") return;
    const doc = this.docById(page.docId);
    if (!doc) return;
    if (page.error?.code === "render_failed") {
      await this.patchPage(page, { status: "rendering", error: undefined });
      await this.patchDoc(doc, { state: "opening" });
      this.scheduleRender(doc);
      return;
    }
    await this.db.results.delete(id);
    await this.patchPage(page, { status: "queued", error: undefined, jobId: undefined, jobBase: undefined, chars: undefined, finishReason: undefined });
    this.pump();
  }

  async retryFailed(docId: string): Promise<void> {
    for (const page of [...(this.pages[docId] ?? [])]) if (page.status === "failed") await this.retryPage(page.id);
  }

  async removeDocument(docId: string): Promise<void> {
    const index = this.docs.findIndex((doc) => doc.id === docId);
    if (index < 0) return;
    const pageIds = (this.pages[docId] ?? []).map((page) => page.id);
    for (const id of pageIds) this.running.get(id)?.controller.abort();
    this.docs.splice(index, 1);
    delete this.pages[docId];
    await this.db.transaction("rw", [this.db.documents, this.db.pages, this.db.images, this.db.thumbs, this.db.results, this.db.sources], async () => {
      await this.db.documents.delete(docId);
      await this.db.sources.delete(docId);
      await this.db.pages.bulkDelete(pageIds);
      await this.db.images.bulkDelete(pageIds);
      await this.db.thumbs.bulkDelete(pageIds);
      await this.db.results.bulkDelete(pageIds);
    });
    this.pump();
  }

  counts(docId: string): PageCounts {
    const counts: PageCounts = { total: 0, rendering: 0, queued: 0, running: 0, done: 0, failed: 0 };
    for (const page of this.pages[docId] ?? []) {
      counts.total++;
      counts[page.status]++;
    }
    return counts;
  }

  async pageImage(id: string): Promise<Blob | undefined> {
    return (await this.db.images.get(id))?.blob;
  }

  async pageThumb(id: string): Promise<Blob | undefined> {
    return (await this.db.thumbs.get(id))?.blob;
  }

  async pageOutput(id: string): Promise<DocumentOutput | undefined> {
    return (await this.db.results.get(id))?.output;
  }

  /** A document's pages with their job outputs, in page order, for the exporters. */
  async exportPages(docId: string): Promise<ExportPage[]> {
    const pages = this.pages[docId] ?? [];
    const rows = await this.db.results.bulkGet(pages.map((page) => page.id));
    return pages.map((page, i) => ({ page: toRaw(page), output: rows[i]?.output }));
  }

  /** Stops sending and abandons jobs in flight, leaving the store as a closed tab would. */
  close(): void {
    this.closed = true;
    for (const job of this.running.values()) job.controller.abort();
  }

  /** Starts queued pages while fewer than `concurrency()` jobs are in flight. Safe to call any time. */
  pump(): void {
    if (!this.loaded || this.closed) return;
    const target = this.options.target();
    if ("problem" in target) {
      this.status.problem = this.hasQueued() ? target.problem : "";
      return;
    }
    this.status.problem = "";
    const limit = Math.max(1, this.options.concurrency());
    while (this.running.size < limit) {
      const page = this.nextQueued();
      if (!page) break;
      this.start(page, target.endpoint);
    }
  }

  /** Resolves once nothing is rendering or running and no page waits to be sent (used by tests). */
  async settled(): Promise<void> {
    for (;;) {
      await this.rendering;
      const inFlight = [...this.running.values()].map((job) => job.done);
      if (inFlight.length === 0) return;
      await Promise.all(inFlight);
    }
  }

  private start(page: PageRecord, endpoint: Endpoint): void {
    const controller = new AbortController();
    const done = this.send(page, endpoint, controller.signal).finally(() => {
      this.running.delete(page.id);
      this.pump();
    });
    this.running.set(page.id, { controller, done });
  }

  private async send(page: PageRecord, endpoint: Endpoint, signal: AbortSignal): Promise<void> {
    const doc = this.docById(page.docId);
    if (!doc) return;
    // A job id from another endpoint means nothing here.
    const jobId = page.jobId && page.jobBase === endpoint.base ? page.jobId : undefined;
    await this.patchPage(page, { status: "running", error: undefined, jobId, jobBase: jobId ? endpoint.base : undefined });
    let verdict: PageVerdict;
    try {
      verdict = await runPageJob({
        client: new JobClient(endpoint, this.options.clientOptions),
        image: await this.pageImage(page.id),
        task: doc.task,
        mode: doc.mode,
        jobId,
        signal,
        onAccepted: (id) => void this.patchPage(page, { jobId: id, jobBase: endpoint.base }),
        retries: this.options.retries,
        retryDelayMs: this.options.retryDelayMs,
      });
    } catch (error) {
      if (signal.aborted) return;
      verdict = { status: "failed", error: { code: "internal_error", message: error instanceof Error ? error.message : String(error) } };
    }
    if (signal.aborted || !this.pageById(page.id)) return;
    await this.finish(page, verdict);
  }

  private async finish(page: PageRecord, verdict: PageVerdict): Promise<void> {
    const cleared = { jobId: undefined, jobBase: undefined, finishedAt: Date.now() };
    if (verdict.status === "failed") {
      if (verdict.output) await this.db.results.put({ pageId: page.id, output: verdict.output });
      await this.patchPage(page, { ...cleared, status: "failed", error: verdict.error });
      return;
    }
    const patch: Partial<PageRecord> = {
      ...cleared,
      status: "done",
      error: undefined,
      chars: (verdict.page.markdown ?? verdict.page.text ?? "").length,
      finishReason: verdict.page.finish_reason,
      width: verdict.page.width ?? page.width,
      height: verdict.page.height ?? page.height,
    };
    // The result and the page's new status land together: a reload never sees "done" without its output.
    await this.db.transaction("rw", this.db.pages, this.db.results, async () => {
      await this.db.results.put({ pageId: page.id, output: verdict.output });
      await this.db.pages.put({ ...toRaw(page), ...patch });
    });
    Object.assign(page, patch);
  }

  private scheduleRender(doc: DocRecord): void {
    this.rendering = this.rendering.then(() => this.render(doc));
  }

  /** Opens a PDF from its kept file and renders every page still `rendering`, queueing each as it lands. */
  private async render(doc: DocRecord): Promise<void> {
    if (!this.docById(doc.id) || this.closed) return;
    const source = await this.db.sources.get(doc.id);
    if (!source) {
      await this.patchDoc(doc, { state: "failed", error: { code: "source_missing", message: "the PDF is no longer in the browser's store; add it again" } });
      return;
    }
    let pdf: PdfHandle;
    try {
      pdf = await this.options.rasterizer.openPdf(source.blob);
    } catch (error) {
      const code = error instanceof RasterError ? error.code : "invalid_pdf";
      await this.patchDoc(doc, { state: "failed", error: { code, message: error instanceof Error ? error.message : String(error) } });
      return;
    }
    try {
      if (doc.pageCount === 0) await this.createPages(doc, pdf.pageCount);
      for (const page of [...(this.pages[doc.id] ?? [])]) {
        if (!this.docById(doc.id) || this.closed) return;
        if (page.status !== "rendering") continue;
        await this.renderOne(doc, page, pdf);
      }
      const complete = (this.pages[doc.id] ?? []).every((page) => page.status !== "rendering" && page.error?.code !== "render_failed");
      if (complete) await this.db.sources.delete(doc.id);
      if (this.docById(doc.id)) await this.patchDoc(doc, { state: "ready" });
    } finally {
      await pdf.close();
    }
  }

  private async createPages(doc: DocRecord, count: number): Promise<void> {
    const pages: PageRecord[] = [];
    for (let index = 1; index <= count; index++) pages.push({ id: pageId(doc.id, index), docId: doc.id, index, status: "rendering" });
    await this.db.transaction("rw", this.db.documents, this.db.pages, async () => {
      await this.db.pages.bulkPut(pages);
      await this.db.documents.update(doc.id, { pageCount: count });
    });
    doc.pageCount = count;
    this.pages[doc.id] = pages;
  }

  private async renderOne(doc: DocRecord, page: PageRecord, pdf: PdfHandle): Promise<void> {
    let rendered;
    try {
      rendered = await pdf.renderPage(page.index, doc.dpi);
    } catch (error) {
      await this.patchPage(page, { status: "failed", error: { code: "render_failed", message: error instanceof Error ? error.message : String(error) } });
      return;
    }
    if (!this.docById(doc.id) || this.closed) return;
    const patch: Partial<PageRecord> = { status: "queued", width: rendered.width, height: rendered.height, hasThumb: true, error: undefined };
    await this.db.transaction("rw", this.db.pages, this.db.images, this.db.thumbs, async () => {
      await this.db.images.put({ key: page.id, blob: rendered.image });
      await this.db.thumbs.put({ key: page.id, blob: rendered.thumb });
      await this.db.pages.put({ ...toRaw(page), ...patch });
    });
    Object.assign(page, patch);
    this.pump();
  }

  private async makeThumbnail(id: string, image: Blob): Promise<void> {
    const made = await this.options.rasterizer.thumbnail(image).catch(() => null);
    const page = this.pageById(id);
    if (!made || !page) return;
    await this.db.thumbs.put({ key: id, blob: made.thumb });
    await this.patchPage(page, { hasThumb: true, width: page.width ?? made.width, height: page.height ?? made.height });
  }

  /** Adds a document to memory; returns its reactive copy, the one to change from now on. */
  private insertDoc(doc: DocRecord, pages: PageRecord[]): DocRecord {
    this.pages[doc.id] = pages;
    this.docs.push(doc);
    return this.docs[this.docs.length - 1];
  }

  private hasQueued(): boolean {
    return this.nextQueued() !== undefined;
  }

  private nextQueued(): PageRecord | undefined {
    for (const doc of this.docs) {
      for (const page of this.pages[doc.id] ?? []) {
        if (page.status === "queued" && !this.running.has(page.id)) return page;
      }
    }
    return undefined;
  }

  docById(id: string): DocRecord | undefined {
    return this.docs.find((doc) => doc.id === id);
  }

  pageById(id: string): PageRecord | undefined {
    const docId = id.slice(0, id.lastIndexOf("-"));
    return this.pages[docId]?.find((page) => page.id === id);
  }

  private async patchPage(page: PageRecord, patch: Partial<PageRecord>): Promise<void> {
    Object.assign(page, patch);
    if (this.pageById(page.id) && !this.closed) await this.db.pages.put(toRaw(page));
  }

  private async patchDoc(doc: DocRecord, patch: Partial<DocRecord> & { error?: PageFailure }): Promise<void> {
    Object.assign(doc, patch);
    if (this.docById(doc.id) && !this.closed) await this.db.documents.put(toRaw(doc));
  }
}
