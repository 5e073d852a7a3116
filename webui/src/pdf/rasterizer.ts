/**
 * What the library needs from a renderer: a PDF's pages as images, and thumbnails. The browser's
 * implementation (`WorkerRasterizer`) runs pdf.js and OffscreenCanvas in a web worker, so rendering a
 * 500-page PDF never blocks the page; this module talks to it with numbered request/response messages.
 */

export interface RenderedPage {
  /** PNG, what the page's job sends: lossless, so the worker sees what pdf.js drew. */
  image: Blob;
  thumb: Blob;
  width: number;
  height: number;
}

export interface PdfHandle {
  pageCount: number;
  renderPage(index: number, dpi: number): Promise<RenderedPage>;
  close(): Promise<void>;
}

export interface Thumbnail {
  thumb: Blob;
  width: number;
  height: number;
}

export interface Rasterizer {
  /** Rejects with a `RasterError` when the file is not a PDF it can open. */
  openPdf(file: Blob): Promise<PdfHandle>;
  /** null when this browser cannot decode the image (the worker may still read it, e.g. TIFF). */
  thumbnail(image: Blob): Promise<Thumbnail | null>;
}

export class RasterError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "RasterError";
  }
}

/** Requests to the render worker, each answered by a `WorkerReply` with the same `id`. */
export type WorkerRequest =
  | { id: number; op: "open"; file: Blob }
  | { id: number; op: "render"; doc: number; index: number; dpi: number }
  | { id: number; op: "close"; doc: number }
  | { id: number; op: "thumbnail"; image: Blob };

export type WorkerReply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; code: string; message: string };

export class WorkerRasterizer implements Rasterizer {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();

  constructor(private readonly worker: Worker) {
    worker.addEventListener("message", (event: MessageEvent<WorkerReply>) => {
      const reply = event.data;
      const waiter = this.waiting.get(reply.id);
      if (!waiter) return;
      this.waiting.delete(reply.id);
      if (reply.ok) waiter.resolve(reply.value);
      else waiter.reject(new RasterError(reply.code, reply.message));
    });
    worker.addEventListener("error", (event) => {
      // A worker that fails to load answers nothing: fail everything waiting on it instead of hanging.
      for (const waiter of this.waiting.values()) waiter.reject(new RasterError("renderer_failed", event.message || "the render worker failed"));
      this.waiting.clear();
    });
  }

  async openPdf(file: Blob): Promise<PdfHandle> {
    const { doc, pageCount } = (await this.call({ op: "open", file })) as { doc: number; pageCount: number };
    return {
      pageCount,
      renderPage: (index, dpi) => this.call({ op: "render", doc, index, dpi }) as Promise<RenderedPage>,
      close: async () => {
        await this.call({ op: "close", doc });
      },
    };
  }

  async thumbnail(image: Blob): Promise<Thumbnail | null> {
    try {
      return (await this.call({ op: "thumbnail", image })) as Thumbnail;
    } catch (error) {
      if (error instanceof RasterError && error.code === "undecodable_image") return null;
      throw error;
    }
  }

  private call(request: DistributiveOmit<WorkerRequest, "id">): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ ...request, id });
    });
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
