/// <reference lib="webworker" />
/**
 * The render worker: PDF pages -> PNG page images and JPEG thumbnails, off the page's thread. pdf.js
 * parses in its own nested worker and draws here on OffscreenCanvas. A worker has no `document`, so
 * pdf.js gets a canvas factory for OffscreenCanvas, a filter factory without SVG filters, glyphs drawn
 * as paths (no FontFace), and its CMaps, standard fonts and wasm decoders from this app's own assets.
 *
 * Messages: `WorkerRequest` in, `WorkerReply` out (see rasterizer.ts).
 */

import { getDocument, PDFWorker, type PDFDocumentProxy } from "pdfjs-dist";
import pdfWorkerUrl from "pdfjs-dist/build/pdf.worker.min.mjs?url";
import type { RenderedPage, Thumbnail, WorkerReply, WorkerRequest } from "./rasterizer";

const THUMB_SIZE = 160;
// Chromium's canvas limit is about 268 M pixels; pages past this are drawn smaller, not failed.
const MAX_PAGE_PIXELS = 60_000_000;

// CMaps (CJK text), standard fonts (PDFs that do not embed Helvetica & co) and the JPEG 2000 / JBIG2
// decoders that scans often use, as hashed assets of this build, looked up by file name. (pdf.js's
// qcms colour-management wasm is left out: it is off when pdf.js does not fetch its own files.)
const BUNDLED = import.meta.glob(
  [
    "../../node_modules/pdfjs-dist/cmaps/*.bcmap",
    "../../node_modules/pdfjs-dist/standard_fonts/*.{pfb,ttf}",
    "../../node_modules/pdfjs-dist/wasm/{openjpeg,jbig2}.wasm",
  ],
  { query: "?url", import: "default", eager: true },
) as Record<string, string>;
const ASSET_URLS = new Map(Object.entries(BUNDLED).map(([path, url]) => [path.slice(path.lastIndexOf("/") + 1), url]));

class BundledDataFactory {
  async fetch({ filename }: { kind: string; filename: string }): Promise<Uint8Array> {
    const url = ASSET_URLS.get(filename);
    if (!url) throw new Error(`pdf.js asked for ${filename}, which this build does not bundle`);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  }
}

interface CanvasEntry {
  canvas: OffscreenCanvas | null;
  context: OffscreenCanvasRenderingContext2D | null;
}

class OffscreenCanvasFactory {
  create(width: number, height: number): CanvasEntry {
    const canvas = new OffscreenCanvas(width, height);
    return { canvas, context: canvas.getContext("2d", { willReadFrequently: true }) };
  }

  reset(entry: CanvasEntry, width: number, height: number): void {
    if (!entry.canvas) return;
    entry.canvas.width = width;
    entry.canvas.height = height;
  }

  destroy(entry: CanvasEntry): void {
    if (entry.canvas) {
      // Zero-sized canvases give their memory back at once rather than at the next GC.
      entry.canvas.width = 0;
      entry.canvas.height = 0;
    }
    entry.canvas = null;
    entry.context = null;
  }
}

/** pdf.js's DOM filter factory builds SVG filters in a document; without one, transfer maps are skipped. */
class NoFilterFactory {
  addFilter(): string {
    return "none";
  }
  addHCMFilter(): string {
    return "none";
  }
  addAlphaFilter(): string {
    return "none";
  }
  addLuminosityFilter(): string {
    return "none";
  }
  addHighlightHCMFilter(): string {
    return "none";
  }
  destroy(): void {}
}

let pdfWorker: PDFWorker | undefined;
const documents = new Map<number, PDFDocumentProxy>();
let nextDoc = 1;

async function openPdf(file: Blob): Promise<{ doc: number; pageCount: number }> {
  // One pdf.js worker for every document, made on first use.
  pdfWorker ??= PDFWorker.create({ port: new Worker(pdfWorkerUrl, { type: "module" }) });
  const task = getDocument({
    data: new Uint8Array(await file.arrayBuffer()),
    worker: pdfWorker,
    CanvasFactory: OffscreenCanvasFactory,
    FilterFactory: NoFilterFactory,
    BinaryDataFactory: BundledDataFactory,
    useWorkerFetch: false,
    disableFontFace: true,
    useSystemFonts: false,
    isOffscreenCanvasSupported: true,
    stopAtErrors: false,
    // pdf.js types its factory options as its own DOM classes; these stand in for them in a worker.
  } as Parameters<typeof getDocument>[0]);
  let pdf: PDFDocumentProxy;
  try {
    pdf = await task.promise;
  } catch (error) {
    await task.destroy();
    throw error;
  }
  const doc = nextDoc++;
  documents.set(doc, pdf);
  return { doc, pageCount: pdf.numPages };
}

async function renderPage(doc: number, index: number, dpi: number): Promise<RenderedPage> {
  const pdf = documents.get(doc);
  if (!pdf) throw new Error(`document ${doc} is not open`);
  const page = await pdf.getPage(index);
  try {
    let viewport = page.getViewport({ scale: dpi / 72 });
    const pixels = viewport.width * viewport.height;
    if (pixels > MAX_PAGE_PIXELS) viewport = page.getViewport({ scale: (dpi / 72) * Math.sqrt(MAX_PAGE_PIXELS / pixels) });
    const width = Math.max(1, Math.floor(viewport.width));
    const height = Math.max(1, Math.floor(viewport.height));
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d");
    if (!context) throw new Error("no 2d context for an OffscreenCanvas");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    await page.render({ canvasContext: context, canvas, viewport } as unknown as Parameters<typeof page.render>[0]).promise;
    const image = await canvas.convertToBlob({ type: "image/png" });
    const thumb = await thumbnailOf(canvas, width, height);
    canvas.width = 0;
    canvas.height = 0;
    return { image, thumb, width, height };
  } finally {
    page.cleanup();
  }
}

async function thumbnailOf(source: CanvasImageSource, width: number, height: number): Promise<Blob> {
  const scale = Math.min(1, THUMB_SIZE / Math.max(width, height));
  const canvas = new OffscreenCanvas(Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale)));
  const context = canvas.getContext("2d");
  if (!context) throw new Error("no 2d context for an OffscreenCanvas");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(source, 0, 0, canvas.width, canvas.height);
  return canvas.convertToBlob({ type: "image/jpeg", quality: 0.8 });
}

async function thumbnail(image: Blob): Promise<Thumbnail> {
  let bitmap: ImageBitmap;
  try {
    // from-image: the same EXIF rotation the worker applies before reading the page.
    bitmap = await createImageBitmap(image, { imageOrientation: "from-image" });
  } catch {
    throw Object.assign(new Error("this browser cannot decode the image"), { code: "undecodable_image" });
  }
  try {
    return { thumb: await thumbnailOf(bitmap, bitmap.width, bitmap.height), width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close();
  }
}

async function handle(request: WorkerRequest): Promise<unknown> {
  switch (request.op) {
    case "open":
      return openPdf(request.file);
    case "render":
      return renderPage(request.doc, request.index, request.dpi);
    case "close": {
      const pdf = documents.get(request.doc);
      documents.delete(request.doc);
      await pdf?.destroy();
      return null;
    }
    case "thumbnail":
      return thumbnail(request.image);
  }
}

/** pdf.js's exceptions by name -> the worker's error codes for the same problems. */
function errorCode(error: unknown): string {
  const name = error instanceof Error ? error.name : "";
  if ("code" in Object(error) && typeof (error as { code: unknown }).code === "string") return (error as { code: string }).code;
  if (name === "PasswordException") return "pdf_password_required";
  if (name === "InvalidPDFException") return "invalid_pdf";
  return "render_failed";
}

self.addEventListener("message", (event: MessageEvent<WorkerRequest>) => {
  const request = event.data;
  handle(request).then(
    (value) => self.postMessage({ id: request.id, ok: true, value } satisfies WorkerReply),
    (error: unknown) =>
      self.postMessage({
        id: request.id,
        ok: false,
        code: errorCode(error),
        message: error instanceof Error ? error.message : String(error),
      } satisfies WorkerReply),
  );
});
