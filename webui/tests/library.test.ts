import "fake-indexeddb/auto";
import { afterEach, describe, expect, it } from "vitest";
import { OcrDatabase } from "../src/state/db";
import { Library, sniffKind, type LibraryOptions } from "../src/state/library";
import type { Endpoint } from "../src/api/client";
import { TextPdfRasterizer, delay, documentOutput, imageFile, pdfFile, readLikeWorker, startStandIn, type StandIn } from "./standin";

// fake-indexeddb is an in-memory IndexedDB for Node; the browser's real one is exercised end to end.
const SETTINGS = { task: "markdown" as const, mode: "tiny" as const, dpi: 144 };
const cleanups: (() => Promise<void> | void)[] = [];
let dbCount = 0;

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(handler?: Parameters<typeof startStandIn>[0]): Promise<StandIn> {
  const standIn = await startStandIn(handler);
  cleanups.push(() => standIn.close());
  return standIn;
}

function freshDbName(): string {
  return `test-${++dbCount}-${Date.now()}`;
}

/** A library on database `name`, as a new tab (or a reload) would open it. */
async function open(name: string, endpoint: Endpoint | null, extra: Partial<LibraryOptions> = {}): Promise<Library> {
  const db = new OcrDatabase(name);
  const library = new Library({
    db,
    rasterizer: new TextPdfRasterizer(),
    target: () => (endpoint ? { endpoint } : { problem: "no endpoint" }),
    concurrency: () => 4,
    clientOptions: { pollIntervalMs: 5, maxPollIntervalMs: 20 },
    retries: 2,
    retryDelayMs: 5,
    ...extra,
  });
  cleanups.push(() => {
    library.close();
    db.close();
  });
  await library.load();
  return library;
}

function statuses(library: Library): string[] {
  return library.docs.flatMap((doc) => (library.pages[doc.id] ?? []).map((page) => `${doc.name}#${page.index}:${page.status}`));
}

describe("Library", () => {
  it("sends each image as one job with the document's task and mode and keeps the output", async () => {
    const standIn = await serve();
    const library = await open(freshDbName(), { base: standIn.url });
    await library.addFiles([imageFile("alpha"), imageFile("beta")], SETTINGS);
    await library.settled();
    expect(statuses(library)).toEqual(["alpha.png#1:done", "beta.png#1:done"]);
    const inputs = standIn.seen.map((request) => (request.body as { input: Record<string, unknown> }).input);
    expect(inputs.map((input) => [input.task, input.mode, input.include_figures])).toEqual([
      ["markdown", "tiny", true],
      ["markdown", "tiny", true],
    ]);
    const [alpha] = library.docs;
    expect((await library.pageOutput(library.pages[alpha.id][0].id))?.pages[0].markdown).toBe("# alpha");
  });

  it("never has more jobs in flight than the concurrency allows", async () => {
    const standIn = await serve(async (request) => {
      await delay(30);
      return readLikeWorker((request.body as { input: { image: string } }).input);
    });
    const library = await open(freshDbName(), { base: standIn.url }, { concurrency: () => 2 });
    await library.addFiles(["a", "b", "c", "d", "e"].map((label) => imageFile(label)), SETTINGS);
    await library.settled();
    expect(standIn.count("/runsync")).toBe(5);
    expect(standIn.maxInFlight).toBe(2);
  });

  it("after a reload shows finished pages from the store and sends nothing again", async () => {
    const standIn = await serve();
    const name = freshDbName();
    const first = await open(name, { base: standIn.url });
    await first.addFiles([imageFile("one"), pdfFile("book", 3)], SETTINGS);
    await first.settled();
    first.close();
    const sent = standIn.seen.length;
    expect(sent).toBe(4);

    const reloaded = await open(name, { base: standIn.url });
    await reloaded.settled();
    await delay(30);
    expect(standIn.seen.length).toBe(sent);
    expect(statuses(reloaded)).toEqual(["one.png#1:done", "book.pdf#1:done", "book.pdf#2:done", "book.pdf#3:done"]);
    const book = reloaded.docs[1];
    const exported = await reloaded.exportPages(book.id);
    expect(exported.map((row) => row.output?.pages[0].markdown)).toEqual(["# book p1", "# book p2", "# book p3"]);
  });

  it("marks only the page the worker failed, with the worker's code, and retries it on request", async () => {
    const standIn = await serve();
    const library = await open(freshDbName(), { base: standIn.url });
    const corrupt = new File([new Uint8Array([1, 2, 3, 4])], "corrupt.png", { type: "image/png" });
    await library.addFiles([imageFile("good"), corrupt], SETTINGS);
    await library.settled();
    expect(statuses(library)).toEqual(["good.png#1:done", "corrupt.png#1:failed"]);
    const failed = library.pages[library.docs[1].id][0];
    expect(failed.error).toEqual({ code: "invalid_image", message: "cannot identify image file" });

    // The worker learns to read it: a retry sends the page again and it completes.
    standIn.handler = () => ({ body: { id: "ok", status: "COMPLETED", output: documentOutput("fixed") } });
    await library.retryPage(failed.id);
    await library.settled();
    expect(failed.status).toBe("done");
    expect(failed.error).toBeUndefined();
    expect(standIn.count("/runsync")).toBe(3);
  });

  it("keeps a completed job's page failure (a flagged page) as that page's error", async () => {
    const standIn = await serve(() => ({
      body: { id: "p", status: "COMPLETED", output: documentOutput("", { failure: { code: "image_too_large", message: "60000000 pixels" } }) },
    }));
    const library = await open(freshDbName(), { base: standIn.url });
    await library.addFiles([imageFile("huge")], SETTINGS);
    await library.settled();
    expect(library.pages[library.docs[0].id][0]).toMatchObject({ status: "failed", error: { code: "image_too_large" } });
  });

  it("queues again a page that was running when the tab closed, and sends it once more", async () => {
    let answer = false;
    const standIn = await serve(async (request) => {
      while (!answer) await delay(5);
      return readLikeWorker((request.body as { input: { image: string } }).input);
    });
    const name = freshDbName();
    const first = await open(name, { base: standIn.url });
    await first.addFiles([imageFile("midway")], SETTINGS);
    while (standIn.count("/runsync") === 0) await delay(5);
    first.close();

    answer = true;
    const reloaded = await open(name, { base: standIn.url });
    await reloaded.settled();
    expect(statuses(reloaded)).toEqual(["midway.png#1:done"]);
    expect(standIn.count("/runsync")).toBe(2);
  });

  it("after a reload polls a RunPod job that was queued remotely instead of sending the page again", async () => {
    let finished = false;
    const standIn = await serve((request) => {
      if (request.path === "/runsync") return { body: { id: "rp-42", status: "IN_QUEUE" } };
      return finished
        ? { body: { id: "rp-42", status: "COMPLETED", output: documentOutput("from runpod") } }
        : { body: { id: "rp-42", status: "IN_PROGRESS" } };
    });
    const name = freshDbName();
    const first = await open(name, { base: standIn.url, apiKey: "k" });
    await first.addFiles([imageFile("queued")], SETTINGS);
    while (standIn.count("/status/rp-42") === 0) await delay(5);
    first.close();
    expect(first.pages[first.docs[0].id][0].jobId).toBe("rp-42");

    finished = true;
    const reloaded = await open(name, { base: standIn.url, apiKey: "k" });
    await reloaded.settled();
    const page = reloaded.pages[reloaded.docs[0].id][0];
    expect(page.status).toBe("done");
    expect(page.jobId).toBeUndefined();
    expect(standIn.count("/runsync")).toBe(1);
    expect((await reloaded.pageOutput(page.id))?.pages[0].markdown).toBe("from runpod");
  });

  it("sends the page again when the endpoint has forgotten its job id", async () => {
    let sent = 0;
    const standIn = await serve((request) => {
      if (request.path === "/runsync") {
        sent++;
        return sent === 1 ? { body: { id: "lost", status: "IN_QUEUE" } } : { body: { id: "new", status: "COMPLETED", output: documentOutput("again") } };
      }
      return { status: 404, body: "unknown job" };
    });
    const library = await open(freshDbName(), { base: standIn.url });
    await library.addFiles([imageFile("x")], SETTINGS);
    await library.settled();
    expect(statuses(library)).toEqual(["x.png#1:done"]);
    expect(standIn.count("/runsync")).toBe(2);
  });

  it("gives up after the retries on an unreachable server, with the network error on the page", async () => {
    const standIn = await serve();
    const url = standIn.url;
    await standIn.close();
    const library = await open(freshDbName(), { base: url });
    await library.addFiles([imageFile("offline")], SETTINGS);
    await library.settled();
    expect(library.pages[library.docs[0].id][0]).toMatchObject({ status: "failed", error: { code: "network_error" } });
  });

  it("refuses a page too large for the endpoint without sending it", async () => {
    const standIn = await serve();
    const library = await open(freshDbName(), { base: standIn.url, maxPayloadBytes: 100 });
    await library.addFiles([new File([new Uint8Array(200)], "big.png")], SETTINGS);
    await library.settled();
    expect(library.pages[library.docs[0].id][0]).toMatchObject({ status: "failed", error: { code: "payload_too_large" } });
    expect(standIn.seen).toHaveLength(0);
  });

  it("renders a PDF page by page, queues each page as it lands and drops the file once all are rendered", async () => {
    const standIn = await serve();
    const name = freshDbName();
    const library = await open(name, { base: standIn.url });
    const [doc] = await library.addFiles([pdfFile("report", 3)], SETTINGS);
    await library.settled();
    expect(doc.pageCount).toBe(3);
    expect(statuses(library)).toEqual(["report.pdf#1:done", "report.pdf#2:done", "report.pdf#3:done"]);
    const db = new OcrDatabase(name);
    cleanups.push(() => db.close());
    expect(await db.sources.count()).toBe(0);
    expect(await db.images.count()).toBe(3);
    expect((await db.documents.get(doc.id))?.state).toBe("ready");
  });

  it("resumes rendering a PDF after a reload from the kept file, without rendering finished pages again", async () => {
    const standIn = await serve();
    const name = freshDbName();
    const rasterizer = new TextPdfRasterizer();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    rasterizer.gate = async () => {
      if (rasterizer.rendered >= 2) await held;
    };
    const first = await open(name, { base: standIn.url }, { rasterizer });
    await first.addFiles([pdfFile("long", 5)], SETTINGS);
    while (rasterizer.rendered < 2) await delay(5);
    first.close();
    release();

    const second = new TextPdfRasterizer();
    const reloaded = await open(name, { base: standIn.url }, { rasterizer: second });
    await reloaded.settled();
    expect(statuses(reloaded)).toEqual([1, 2, 3, 4, 5].map((i) => `long.pdf#${i}:done`));
    expect(second.rendered).toBe(3);
  });

  it("fails a document that is not a PDF it can open, with the reason", async () => {
    const standIn = await serve();
    const library = await open(freshDbName(), { base: standIn.url });
    await library.addFiles([new File(["%PDF-1.7 truncated"], "broken.pdf")], SETTINGS);
    await library.settled();
    expect(library.docs[0]).toMatchObject({ state: "failed", error: { code: "invalid_pdf" } });
    expect(standIn.seen).toHaveLength(0);
  });

  it("sends nothing and says why while there is no endpoint", async () => {
    const library = await open(freshDbName(), null);
    await library.addFiles([imageFile("waiting")], SETTINGS);
    expect(library.status.problem).toBe("no endpoint");
    expect(statuses(library)).toEqual(["waiting.png#1:queued"]);
  });

  it("removes a document with its pages, images and results", async () => {
    const standIn = await serve();
    const name = freshDbName();
    const library = await open(name, { base: standIn.url });
    const [doc] = await library.addFiles([pdfFile("gone", 2)], SETTINGS);
    await library.settled();
    await library.removeDocument(doc.id);
    expect(library.docs).toHaveLength(0);
    const db = new OcrDatabase(name);
    cleanups.push(() => db.close());
    expect([await db.pages.count(), await db.images.count(), await db.results.count(), await db.thumbs.count()]).toEqual([0, 0, 0, 0]);
  });
});

describe("sniffKind", () => {
  it("takes a PDF by its header whatever the file is called, and anything else as an image", async () => {
    expect(await sniffKind(new File(["%PDF-1.4\n"], "scan.jpg"))).toBe("pdf");
    expect(await sniffKind(new File([new Uint8Array([0xff, 0xd8, 0xff])], "photo.pdf"))).toBe("image");
  });
});
