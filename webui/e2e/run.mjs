// End to end: the built web UI in a real headless Chromium (Debian's, driven by playwright-core),
// against a running worker server that serves it: `node webui/e2e/run.mjs http://127.0.0.1:PORT
// [--screenshot out.png]`. The server must be the real one (python -m worker.server); with the tiny
// random checkpoint its text is noise, so pages are checked against the worker's own outputs.
//
// It adds a 3-page PDF (markdown task), then an image and a corrupt image (layout task), and checks:
// every page completes, the corrupt one fails with invalid_image on its page only; one /runsync per
// page; the exported markdown is the pages joined with the page separator and equals the raw outputs;
// the .docx has the pages' words and a page break between pages; layout boxes drawn = boxes returned;
// after a reload everything is still there and nothing is sent again; a retry sends the page again.
// Prints one line per check and `e2e: N passed, 0 failed` (exit 0), or the failure (exit 1).

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { strFromU8, unzipSync } from "fflate";
import { chromium } from "playwright-core";

const PAGE_SPLIT = "\n\n<--- Page Split --->\n\n";
// Without the networking flags Chromium keeps trying to reach Google's services, which a closed
// network refuses many times a second.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const COMPLETION_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS ?? 240_000);

const args = process.argv.slice(2);
const base = args.find((arg) => /^https?:\/\//.test(arg));
const screenshotAt = args.indexOf("--screenshot");
const screenshotPath = screenshotAt >= 0 ? args[screenshotAt + 1] : null;
if (!base) {
  console.error("usage: node webui/e2e/run.mjs http://127.0.0.1:PORT [--screenshot out.png]");
  process.exit(2);
}

let passed = 0;
function check(condition, what, detail = "") {
  if (!condition) throw new Error(`FAILED: ${what}${detail ? `\n  ${detail}` : ""}`);
  passed++;
  console.log(`ok ${passed} - ${what}`);
}

const work = mkdtempSync(join(tmpdir(), "webui-e2e-"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: CHROMIUM_ARGS,
});
let failure = null;
try {
  await run();
} catch (error) {
  failure = error;
} finally {
  await browser.close();
  rmSync(work, { recursive: true, force: true });
}
if (failure) {
  console.error(failure.stack ?? String(failure));
  console.log(`e2e: ${passed} passed, 1 failed`);
  process.exit(1);
}
console.log(`e2e: ${passed} passed, 0 failed`);

async function run() {
  const files = await makeInputs();
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const jobs = { runsync: 0, status: 0 };
  const pageErrors = [];
  page.on("request", (request) => {
    const path = new URL(request.url()).pathname;
    if (path.endsWith("/runsync")) jobs.runsync++;
    if (path.includes("/status/")) jobs.status++;
  });
  page.on("pageerror", (error) => pageErrors.push(error.message));

  await page.goto(base);
  await page.getByText("Drop PDFs or images").waitFor();

  // Tiny mode (768 px, no tiles) keeps the CPU model quick; the PDF reads as markdown.
  await setSettings(page, { mode: "tiny", task: "markdown" });
  await page.locator('[data-testid="file-input"]').setInputFiles([files.pdf]);
  await page.locator('[data-testid="doc"][data-name="three-pages.pdf"]').waitFor();
  await setSettings(page, { task: "layout" });
  await page.locator('[data-testid="file-input"]').setInputFiles([files.image, files.corrupt]);

  const finalCounts = await waitForDocs(page, { "three-pages.pdf": 3, "scan.png": 1, "corrupt.png": 1 });
  check(
    JSON.stringify(finalCounts) ===
      JSON.stringify({ "corrupt.png": { done: 0, failed: 1 }, "scan.png": { done: 1, failed: 0 }, "three-pages.pdf": { done: 3, failed: 0 } }),
    "every page completes; only the corrupt image fails",
    JSON.stringify(finalCounts),
  );
  check(jobs.runsync === 5 && jobs.status === 0, "one /runsync per page (5), no polling on the local server", JSON.stringify(jobs));

  // The failure is on the corrupt image's page, with the worker's code, and only there.
  await selectDoc(page, "corrupt.png");
  const failedRow = page.locator('[data-testid="page-row"][data-page="1"]');
  check((await failedRow.getAttribute("data-status")) === "failed", "the corrupt image's page is marked failed");
  const errorCode = (await failedRow.locator('[data-testid="page-error"]').textContent())?.trim();
  check(errorCode === "invalid_image", "the page shows the worker's error code invalid_image", `got ${errorCode}`);
  const failureText = await page.locator('[data-testid="page-failure"]').textContent();
  check(failureText.includes("invalid_image"), "the page view shows the failure with its code and message", failureText);

  // Markdown export: the pages joined with the separator, equal to the worker's raw outputs (JSON export).
  await selectDoc(page, "three-pages.pdf");
  const markdown = await download(page, "three-pages.pdf", "export-md");
  const raw = JSON.parse(await download(page, "three-pages.pdf", "export-json"));
  const parts = markdown.split(PAGE_SPLIT);
  check(parts.length === 3, "the markdown export has 3 pages split by the page separator", `got ${parts.length} parts`);
  const rawPages = raw.pages.map((p) => p.output?.pages?.[0]?.markdown);
  check(
    rawPages.every((text) => typeof text === "string") && JSON.stringify(parts) === JSON.stringify(rawPages),
    "each markdown part is its page's markdown as the worker returned it",
    JSON.stringify({ parts, rawPages }),
  );
  check(raw.pages.every((p, i) => p.page === i + 1 && p.status === "done" && p.output.task === "markdown" && p.output.mode === "tiny"), "the JSON export keeps each page job's output, task and mode");

  // The page view shows the same text.
  for (let index = 1; index <= 3; index++) {
    await page.locator(`[data-testid="page-row"][data-page="${index}"]`).click();
    await page.locator(`[data-testid="page-view"][data-page="${index}"]`).waitFor();
    await page.locator('[data-testid="tab-source"]').click();
    const shown = await page.locator('[data-testid="page-source"]').textContent();
    check(shown === rawPages[index - 1], `page ${index}'s view shows its markdown`);
  }

  // Word export: a page break between pages, and every word of every page.
  const docx = unzipSync(new Uint8Array(await downloadBytes(page, "three-pages.pdf", "export-docx")));
  const documentXml = strFromU8(docx["word/document.xml"]);
  const breaks = documentXml.match(/<w:br w:type="page"\/>/g)?.length ?? 0;
  check(breaks === 2, "the .docx separates the 3 pages with 2 page breaks", `got ${breaks}`);
  const wordText = runText(documentXml);
  const missing = rawPages.flatMap(wordsOf).filter((word) => !wordText.includes(word));
  check(missing.length === 0, "the .docx holds every word of every page", `missing ${JSON.stringify(missing)} in ${JSON.stringify(wordText)}`);

  // Layout: the boxes drawn over the image are the boxes the worker returned.
  await selectDoc(page, "scan.png");
  const layout = JSON.parse(await download(page, "scan.png", "export-json")).pages[0].output;
  check(layout.task === "layout" && Array.isArray(layout.pages[0].blocks), "the image was read with the layout task and has blocks");
  const boxesReturned = layout.pages[0].blocks.reduce((sum, block) => sum + block.boxes.length, 0);
  const boxesDrawn = await page.locator('[data-testid="box"]').count();
  check(boxesDrawn === boxesReturned, `the page shows the ${boxesReturned} boxes the worker returned`, `drew ${boxesDrawn}`);

  // Reload: documents, pages and results come back from IndexedDB and nothing is sent again.
  const before = { ...jobs };
  await page.reload();
  const reloaded = await waitForDocs(page, { "three-pages.pdf": 3, "scan.png": 1, "corrupt.png": 1 });
  check(JSON.stringify(reloaded) === JSON.stringify(finalCounts), "after a reload every document and page status is kept", JSON.stringify(reloaded));
  await selectDoc(page, "three-pages.pdf");
  await page.locator('[data-testid="page-row"][data-page="2"]').click();
  await page.locator('[data-testid="page-view"][data-page="2"] .stage img').waitFor();
  const imageWidth = await page.locator('[data-testid="page-view"] .stage img').evaluate((img) => img.naturalWidth);
  check(imageWidth > 0, "after a reload the page image is shown from the browser's store", `naturalWidth ${imageWidth}`);
  await page.locator('[data-testid="tab-source"]').click();
  check((await page.locator('[data-testid="page-source"]').textContent()) === rawPages[1], "after a reload the page's result is shown from the store");
  await page.waitForTimeout(3000);
  check(jobs.runsync === before.runsync && jobs.status === before.status, "a reload sends no job again", JSON.stringify({ before, after: jobs }));

  // Retry of the failed page sends it once more; the worker fails it the same way.
  await selectDoc(page, "corrupt.png");
  await page.locator('[data-testid="retry-page"]').click();
  const deadline = Date.now() + COMPLETION_TIMEOUT_MS;
  while (jobs.runsync === before.runsync && Date.now() < deadline) await page.waitForTimeout(100);
  await waitForDocs(page, { "three-pages.pdf": 3, "scan.png": 1, "corrupt.png": 1 });
  check(jobs.runsync === before.runsync + 1, "a retry sends the failed page, and only it, again", JSON.stringify(jobs));
  const retriedCode = (await page.locator('[data-testid="page-row"][data-page="1"] [data-testid="page-error"]').textContent())?.trim();
  check(retriedCode === "invalid_image", "the retried page fails again with the worker's code", `got ${retriedCode}`);

  check(pageErrors.length === 0, "no uncaught errors in the page", pageErrors.join("\n"));

  if (screenshotPath) {
    await selectDoc(page, "three-pages.pdf");
    await page.locator('[data-testid="page-row"][data-page="1"]').click();
    await page.locator('[data-testid="page-view"][data-page="1"] .stage img').waitFor();
    await page.locator("button", { hasText: "Rendered" }).click();
    await page.waitForTimeout(300);
    await page.screenshot({ path: screenshotPath });
    console.log(`screenshot: ${screenshotPath}`);
  }
  await context.close();
}

/** The test files, made by the browser itself: a 3-page PDF (print to PDF), a PNG scan, a broken PNG. */
async function makeInputs() {
  const maker = await browser.newPage();
  const section = (n, title, lines) =>
    `<section style="break-after:page;font:16px/1.5 serif;padding:24px"><h1>${title}</h1>${lines.map((l) => `<p>${l}</p>`).join("")}<p>Page ${n}</p></section>`;
  await maker.setContent(
    section(1, "Annual Report 2025", ["Revenue grew by twelve percent.", "The board met four times."]) +
      section(2, "Operations", ["Two new plants opened in spring.", "<table border=1><tr><td>Q1</td><td>10</td></tr><tr><td>Q2</td><td>12</td></tr></table>"]) +
      section(3, "Outlook", ["We expect steady demand.", "Signed, the directors."]),
  );
  const pdf = join(work, "three-pages.pdf");
  writeFileSync(pdf, await maker.pdf({ width: "105mm", height: "148mm", printBackground: true }));
  await maker.setViewportSize({ width: 640, height: 420 });
  await maker.setContent(`<body style="margin:0;background:#fff;font:22px/1.4 sans-serif;padding:30px"><h2>Invoice 0042</h2><p>Total due: 118.00 EUR</p><p>Thank you for your order.</p></body>`);
  const image = join(work, "scan.png");
  writeFileSync(image, await maker.screenshot());
  await maker.close();
  // A PNG signature and header, then the file simply ends: the worker cannot decode it.
  const corrupt = join(work, "corrupt.png");
  writeFileSync(corrupt, readFileSync(image).subarray(0, 64));
  return { pdf, image, corrupt };
}

async function setSettings(page, { mode, task }) {
  await page.locator('[data-testid="settings-toggle"]').click();
  if (mode) await page.locator('[data-testid="mode"]').selectOption(mode);
  if (task) await page.locator('[data-testid="task"]').selectOption(task);
  await page.locator('[data-testid="settings-done"]').click();
  await page.locator('[data-testid="settings"]').waitFor({ state: "detached" });
}

/** Waits until each named document has its page count and no page left to do; returns done/failed per name. */
async function waitForDocs(page, expectedPages) {
  const names = Object.keys(expectedPages).sort();
  await page.waitForFunction(
    (expected) => {
      const docs = [...document.querySelectorAll('[data-testid="doc"]')];
      return Object.entries(expected).every(([name, total]) => {
        const doc = docs.find((d) => d.dataset.name === name);
        if (!doc || doc.dataset.state === "opening") return false;
        const done = Number(doc.dataset.done);
        const failed = Number(doc.dataset.failed);
        return Number(doc.dataset.total) === total && done + failed === total;
      });
    },
    expectedPages,
    { timeout: COMPLETION_TIMEOUT_MS, polling: 250 },
  );
  const counts = {};
  for (const name of names) {
    const doc = page.locator(`[data-testid="doc"][data-name="${name}"]`);
    counts[name] = { done: Number(await doc.getAttribute("data-done")), failed: Number(await doc.getAttribute("data-failed")) };
  }
  return counts;
}

async function selectDoc(page, name) {
  await page.locator(`[data-testid="doc"][data-name="${name}"] .title`).click();
  await page.locator('[data-testid="page-view"]').waitFor();
}

async function downloadBytes(page, docName, button) {
  const [file] = await Promise.all([
    page.waitForEvent("download"),
    page.locator(`[data-testid="doc"][data-name="${docName}"] [data-testid="${button}"]`).click(),
  ]);
  const path = join(work, `${Date.now()}-${file.suggestedFilename()}`);
  await file.saveAs(path);
  return readFileSync(path);
}

async function download(page, docName, button) {
  return (await downloadBytes(page, docName, button)).toString("utf8");
}

/** The concatenated text of a document.xml's runs, entities decoded. */
function runText(xml) {
  return [...xml.matchAll(/<w:t(?: [^>]*)?>([^<]*)<\/w:t>/g)]
    .map((match) => match[1])
    .join("")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, "&");
}

/** The letter-and-digit runs of a page's markdown outside HTML tags and entities: text any reading keeps. */
function wordsOf(markdown) {
  const text = markdown.replace(/<[^>]*>/g, " ").replace(/&[#\w]+;/g, " ");
  return text.match(/[\p{L}\p{N}]+/gu) ?? [];
}
