/**
 * A stand-in for what the unit tests cannot run: a RunPod-style job server (a real HTTP server on
 * 127.0.0.1 speaking `/runsync` and `/status/{id}`), and a rasterizer for the browser's pdf.js and
 * canvas. The real worker server and pdf.js are exercised by the end-to-end test (e2e/run.mjs).
 */

import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { DocumentOutput } from "../src/api/protocol";
import type { PdfHandle, Rasterizer } from "../src/pdf/rasterizer";

export interface Seen {
  method: string;
  path: string;
  authorization?: string;
  body: unknown;
}

export interface Reply {
  status?: number;
  body: unknown;
}

export type Handler = (request: Seen) => Reply | Promise<Reply>;

export interface StandIn {
  url: string;
  seen: Seen[];
  maxInFlight: number;
  handler: Handler;
  count(path: string): number;
  close(): Promise<void>;
}

export const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Bytes the stand-in accepts as an image: the PNG signature, then a label it echoes as the page text. */
export function fakePng(label: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array([...PNG_SIGNATURE, ...new TextEncoder().encode(label)]);
}

export function imageFile(label: string, name = `${label}.png`): File {
  return new File([fakePng(label)], name, { type: "image/png" });
}

/** What the worker answers for a one-page job whose page reads `markdown`. */
export function documentOutput(markdown: string, extra: Record<string, unknown> = {}): DocumentOutput {
  return {
    type: "document",
    markdown,
    pages: [{ type: "page", page: 1, width: 100, height: 140, markdown, finish_reason: "stop", ...extra }],
  };
}

/** The worker's verdict on a job input: the PNG's label as markdown, or invalid_image. */
export function readLikeWorker(input: { image?: string }): Reply {
  const bytes = Buffer.from(input.image ?? "", "base64");
  if (!PNG_SIGNATURE.every((byte, i) => bytes[i] === byte)) {
    return { body: { id: "job", status: "FAILED", error: "invalid_image: cannot identify image file" } };
  }
  return { body: { id: "job", status: "COMPLETED", output: documentOutput(`# ${bytes.subarray(8).toString()}`) } };
}

export async function startStandIn(handler: Handler = (request) => readLikeWorker((request.body as { input: { image?: string } }).input)): Promise<StandIn> {
  let inFlight = 0;
  const standIn: StandIn = {
    url: "",
    seen: [],
    maxInFlight: 0,
    handler,
    count: (path) => standIn.seen.filter((request) => request.path.startsWith(path)).length,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer(async (request, response) => {
    inFlight++;
    standIn.maxInFlight = Math.max(standIn.maxInFlight, inFlight);
    try {
      const text = await readBody(request);
      const seen: Seen = {
        method: request.method ?? "",
        path: request.url ?? "",
        authorization: request.headers.authorization,
        body: text ? JSON.parse(text) : undefined,
      };
      standIn.seen.push(seen);
      const reply = await standIn.handler(seen);
      response.writeHead(reply.status ?? 200, { "Content-Type": "application/json" });
      response.end(typeof reply.body === "string" ? reply.body : JSON.stringify(reply.body));
    } finally {
      inFlight--;
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  standIn.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return standIn;
}

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    request.on("error", reject);
  });
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Stands in for pdf.js in a worker: a "PDF" is the text `%PDF-fake pages=N`, and page i renders to
 * `fakePng("<name> p<i>")`. `gate`, when set, holds each render until it resolves.
 */
export class TextPdfRasterizer implements Rasterizer {
  rendered = 0;
  gate: (() => Promise<void>) | null = null;

  async openPdf(file: Blob): Promise<PdfHandle> {
    const text = await file.text();
    const match = /pages=(\d+) name=(\S+)/.exec(text);
    if (!match) throw Object.assign(new Error("not a test PDF"), { name: "InvalidPDFException" });
    return {
      pageCount: Number(match[1]),
      renderPage: async (index) => {
        if (this.gate) await this.gate();
        this.rendered++;
        const png = fakePng(`${match[2]} p${index}`);
        return { image: new Blob([png]), thumb: new Blob([png]), width: 100, height: 140 };
      },
      close: async () => {},
    };
  }

  async thumbnail(): Promise<null> {
    return null; // Node cannot decode images: the "browser cannot show it" path
  }
}

export function pdfFile(name: string, pages: number): File {
  return new File([`%PDF-fake pages=${pages} name=${name}`], `${name}.pdf`, { type: "application/pdf" });
}
