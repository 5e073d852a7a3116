/**
 * One page's job, start to verdict: the page image -> job input -> the job client (retrying what says
 * nothing about the job itself: network errors, 429, 5xx, a forgotten job id) -> a page verdict.
 * A job that completed but whose page carries a `failure` is a failed page with the worker's own code.
 */

import { JobLostError, TransientJobError, sleep, type JobClient } from "../api/client";
import type { DocumentOutput, Mode, PageFailure, PageJobInput, PageOutput, Task } from "../api/protocol";
import { blobToBase64 } from "../lib/base64";

export type PageVerdict =
  | { status: "done"; output: DocumentOutput; page: PageOutput }
  | { status: "failed"; error: PageFailure; output?: DocumentOutput };

export interface PageJob {
  client: JobClient;
  image: Blob | undefined;
  task: Task;
  mode: Mode;
  /** A RunPod job already sent for this page (before a reload): polled, not sent again. */
  jobId?: string;
  signal?: AbortSignal;
  onAccepted?: (jobId: string) => void;
  /** Sends after a transient failure; the waits between them grow threefold from `retryDelayMs`. */
  retries?: number;
  retryDelayMs?: number;
}

const DEFAULT_RETRIES = 3;
const DEFAULT_RETRY_DELAY_MS = 1000;
// The JSON around the image in `{"input": {...}}`.
const ENVELOPE_BYTES = 200;

export function buildJobInput(imageBase64: string, task: Task, mode: Mode): PageJobInput {
  // Figure crops come back only when asked for; markdown export and docx embed them.
  return { image: imageBase64, task, mode, ...(task === "ocr" ? {} : { include_figures: true }) };
}

export async function runPageJob(job: PageJob): Promise<PageVerdict> {
  if (!job.image) return failed("image_missing", "the page image is not in the browser's store; add the file again");
  const retries = job.retries ?? DEFAULT_RETRIES;
  let delay = job.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS;
  let jobId = job.jobId;
  let input: PageJobInput | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      if (!jobId && !input) {
        input = buildJobInput(await blobToBase64(job.image), job.task, job.mode);
        const limit = job.client.endpoint.maxPayloadBytes;
        if (limit !== undefined && input.image.length + ENVELOPE_BYTES > limit) {
          return failed("payload_too_large", `the page is ${input.image.length} bytes as base64, over the endpoint's ${limit}-byte limit`);
        }
      }
      const outcome = jobId
        ? await job.client.resume(jobId, { signal: job.signal })
        : await job.client.run(input as PageJobInput, {
            signal: job.signal,
            onAccepted: (id) => {
              jobId = id;
              job.onAccepted?.(id);
            },
          });
      if (outcome.status === "FAILED") return failed(outcome.code, outcome.message);
      return readPage(outcome.output);
    } catch (error) {
      if (error instanceof JobLostError) {
        // RunPod keeps a result 1 min after runsync, 30 min after run: send the page again.
        jobId = undefined;
      } else if (!(error instanceof TransientJobError)) {
        throw error;
      } else if (attempt >= retries) {
        return failed(error.code, error.message);
      }
      if (attempt >= retries) return failed("job_lost", "the endpoint lost the job each time it was sent");
      await sleep(delay, job.signal);
      delay *= 3;
    }
  }
}

function readPage(output: DocumentOutput): PageVerdict {
  const page = output.pages[0];
  if (!page) return { status: "failed", error: { code: "bad_response", message: "the job output has no page" }, output };
  if (page.failure) return { status: "failed", error: page.failure, output };
  return { status: "done", output, page };
}

function failed(code: string, message: string): PageVerdict {
  return { status: "failed", error: { code, message } };
}
