/**
 * The job client: one page job over the RunPod-style routes, the same on the local server and on a
 * RunPod endpoint. `POST {base}/runsync` with `{"input": ...}` answers COMPLETED or FAILED, or, when a job
 * outlasts RunPod's runsync wait (90 s), IN_QUEUE / IN_PROGRESS with an id to poll at `GET {base}/status/{id}`.
 *
 * In: an endpoint and a job input. Out: a `JobOutcome` (the job's own verdict), or a thrown
 * `TransientJobError` (nothing was learnt about the job: network, 429, 5xx; sending again may work) or
 * `JobLostError` (the endpoint forgot the job id; send the job again).
 */

import type { DocumentOutput, PageOutput } from "./protocol";

export interface Endpoint {
  /** The routes are `${base}/runsync` and `${base}/status/{id}`; no trailing slash. */
  base: string;
  /** Sent as `Authorization: Bearer <apiKey>`, only to this endpoint. */
  apiKey?: string;
  /** The largest request body the endpoint takes, where it has a known limit. */
  maxPayloadBytes?: number;
}

export type JobOutcome =
  | { status: "COMPLETED"; id: string | null; output: DocumentOutput }
  | { status: "FAILED"; id: string | null; code: string; message: string };

export class TransientJobError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "TransientJobError";
  }
}

export class JobLostError extends Error {
  constructor(readonly jobId: string) {
    super(`the endpoint no longer knows job ${jobId}`);
    this.name = "JobLostError";
  }
}

export interface JobClientOptions {
  fetch?: typeof fetch;
  /** First wait between status polls; grows by half each poll up to `maxPollIntervalMs`. */
  pollIntervalMs?: number;
  maxPollIntervalMs?: number;
}

export interface RunOptions {
  signal?: AbortSignal;
  /** Called once with the job id when the endpoint queued the job instead of finishing it. */
  onAccepted?: (jobId: string) => void;
}

const PENDING = new Set(["IN_QUEUE", "IN_PROGRESS"]);
// RunPod's terminal states other than COMPLETED and FAILED.
const ENDED = new Set(["CANCELLED", "TIMED_OUT"]);
const ERROR_CODE = /^([a-z][a-z0-9_]*): ([\s\S]*)$/;
const BODY_EXCERPT = 300;

type Reading = { pending: true; id: string } | { pending: false; outcome: JobOutcome };

export class JobClient {
  private readonly fetch: typeof fetch;
  private readonly pollIntervalMs: number;
  private readonly maxPollIntervalMs: number;

  constructor(
    readonly endpoint: Endpoint,
    options: JobClientOptions = {},
  ) {
    // Bound to globalThis: a detached `fetch` throws "Illegal invocation" in browsers.
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.pollIntervalMs = options.pollIntervalMs ?? 1000;
    this.maxPollIntervalMs = options.maxPollIntervalMs ?? 5000;
  }

  /** Sends one job and waits for its verdict, polling when the endpoint queues it. */
  async run(input: object, options: RunOptions = {}): Promise<JobOutcome> {
    return settle(null, async () => {
      const body = await this.request("runsync", {
        method: "POST",
        body: JSON.stringify({ input }),
        signal: options.signal,
      });
      const reading = readJobResponse(body);
      if (!reading.pending) return reading.outcome;
      options.onAccepted?.(reading.id);
      return this.poll(reading.id, options.signal);
    });
  }

  /** Waits for a job sent earlier (e.g. before a page reload) by its id. */
  async resume(jobId: string, options: RunOptions = {}): Promise<JobOutcome> {
    return settle(jobId, () => this.poll(jobId, options.signal, true));
  }

  private async poll(jobId: string, signal?: AbortSignal, immediately = false): Promise<JobOutcome> {
    let delay = this.pollIntervalMs;
    for (let first = true; ; first = false) {
      if (!(first && immediately)) {
        await sleep(delay, signal);
        delay = Math.min(delay * 1.5, this.maxPollIntervalMs);
      }
      const body = await this.request(`status/${encodeURIComponent(jobId)}`, { method: "GET", signal }, jobId);
      const reading = readJobResponse(body);
      if (!reading.pending) return reading.outcome;
    }
  }

  private async request(route: string, init: RequestInit, jobId?: string): Promise<unknown> {
    const url = `${this.endpoint.base}/${route}`;
    const headers: Record<string, string> = { Accept: "application/json" };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    if (this.endpoint.apiKey) headers.Authorization = `Bearer ${this.endpoint.apiKey}`;
    let response: Response;
    try {
      response = await this.fetch(url, { ...init, headers });
    } catch (error) {
      if (init.signal?.aborted) throw error;
      throw new TransientJobError("network_error", `cannot reach ${url}: ${describe(error)}`);
    }
    const text = await response.text();
    if (response.ok) {
      try {
        return JSON.parse(text) as unknown;
      } catch {
        throw new TransientJobError("bad_response", `${url} answered something that is not JSON: ${excerpt(text)}`);
      }
    }
    if (response.status === 404 && jobId !== undefined) throw new JobLostError(jobId);
    // The local server answers a job it refuses outright with the worker's error shape and a 4xx/5xx.
    const workerError = readWorkerError(text);
    if (response.status === 429 || response.status >= 500) {
      throw new TransientJobError(workerError?.code ?? `http_${response.status}`, workerError?.message ?? `${url} answered HTTP ${response.status}: ${excerpt(text)}`);
    }
    throw new HttpRefusal(response.status, url, text, workerError);
  }
}

function readWorkerError(text: string): { code: string; message: string } | undefined {
  try {
    const body = JSON.parse(text) as unknown;
    if (isObject(body) && typeof body.error === "string") return parseJobError(body.error);
  } catch {
    // Not JSON: a proxy's or RunPod's own page; the status says what happened.
  }
  return undefined;
}

/** A 4xx answer to the job itself: the job will fail the same way however often it is sent. */
class HttpRefusal extends Error {
  constructor(
    readonly status: number,
    readonly url: string,
    readonly body: string,
    readonly workerError?: { code: string; message: string },
  ) {
    super(`${url} answered HTTP ${status}`);
  }
}

/** An HTTP refusal (bad key, wrong endpoint, payload too big) is the job's FAILED verdict. */
async function settle(jobId: string | null, send: () => Promise<JobOutcome>): Promise<JobOutcome> {
  try {
    return await send();
  } catch (error) {
    if (!(error instanceof HttpRefusal)) throw error;
    return { status: "FAILED", id: jobId, ...refusalReason(error) };
  }
}

function refusalReason(error: HttpRefusal): { code: string; message: string } {
  if (error.workerError) return error.workerError;
  const detail = excerpt(error.body);
  switch (error.status) {
    case 401:
    case 403:
      return { code: "unauthorized", message: `the endpoint refused the API key (HTTP ${error.status}) ${detail}`.trim() };
    case 404:
      return { code: "not_found", message: `no job API at ${error.url} (HTTP 404): check the endpoint` };
    case 413:
      return { code: "payload_too_large", message: `the endpoint refused the page as too large (HTTP 413) ${detail}`.trim() };
    default:
      return { code: `http_${error.status}`, message: `${error.url} answered HTTP ${error.status}: ${detail}` };
  }
}

/** One `/runsync` or `/status` body -> the job's verdict, or its id while it is still queued. */
export function readJobResponse(body: unknown): Reading {
  if (!isObject(body)) return failed(null, "bad_response", `expected a JSON object, got ${excerpt(JSON.stringify(body))}`);
  const id = typeof body.id === "string" ? body.id : null;
  const status = body.status;
  if (typeof status === "string" && PENDING.has(status)) {
    if (id === null) return failed(null, "bad_response", `a ${status} answer without a job id`);
    return { pending: true, id };
  }
  if (status === "COMPLETED") return readCompleted(id, body.output);
  if (status === "FAILED") return { pending: false, outcome: { status: "FAILED", id, ...parseJobError(body.error) } };
  if (typeof status === "string" && ENDED.has(status)) {
    return failed(id, status.toLowerCase(), `the endpoint reports the job ${status}`);
  }
  return failed(id, "bad_response", `unknown job status ${JSON.stringify(status)}`);
}

function readCompleted(id: string | null, output: unknown): Reading {
  // A streaming worker (STREAM_PAGES=true) answers runsync with its items: pages, then the document.
  if (Array.isArray(output)) output = joinStreamItems(output);
  if (!isObject(output)) {
    // RunPod reports COMPLETED with no output when the result was too large to hand back (~19 MB).
    return failed(id, "output_missing", "the job completed without an output (too large for the endpoint to return?)");
  }
  if (output.error !== undefined) return { pending: false, outcome: { status: "FAILED", id, ...parseJobError(output.error) } };
  if (!Array.isArray(output.pages)) return failed(id, "bad_response", "the job output has no pages");
  return { pending: false, outcome: { status: "COMPLETED", id, output: output as unknown as DocumentOutput } };
}

function joinStreamItems(items: unknown[]): unknown {
  const pages = items.filter((item): item is PageOutput => isObject(item) && item.type === "page");
  const last = items[items.length - 1];
  if (!isObject(last)) return last;
  if (last.error !== undefined) return last;
  return { ...last, pages };
}

/** RunPod's error string `"code: message"` -> its parts; other shapes keep their text. */
export function parseJobError(error: unknown): { code: string; message: string } {
  let text = typeof error === "string" ? error : JSON.stringify(error ?? "no error given");
  // runpod reports a handler's uncaught exception as a JSON string with error_type / error_message.
  if (text.startsWith("{")) {
    try {
      const parsed = JSON.parse(text) as unknown;
      if (isObject(parsed) && typeof parsed.error_message === "string") text = parsed.error_message;
    } catch {
      // Not JSON after all: keep the text as it came.
    }
  }
  const match = ERROR_CODE.exec(text);
  return match ? { code: match[1], message: match[2] } : { code: "job_failed", message: text };
}

function failed(id: string | null, code: string, message: string): Reading {
  return { pending: false, outcome: { status: "FAILED", id, code, message } };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function excerpt(text: string): string {
  return text.length > BODY_EXCERPT ? `${text.slice(0, BODY_EXCERPT)}…` : text;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
