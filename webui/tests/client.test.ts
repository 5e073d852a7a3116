import { afterEach, describe, expect, it } from "vitest";
import { JobClient, JobLostError, TransientJobError, parseJobError, readJobResponse } from "../src/api/client";
import { documentOutput, startStandIn, type StandIn } from "./standin";

const FAST = { pollIntervalMs: 5, maxPollIntervalMs: 20 };
let standIn: StandIn | undefined;

afterEach(async () => {
  await standIn?.close();
  standIn = undefined;
});

describe("JobClient.run", () => {
  it("posts the input wrapped in {input} to /runsync and returns the completed output", async () => {
    standIn = await startStandIn(() => ({ body: { id: "a1", status: "COMPLETED", output: documentOutput("# Hello") } }));
    const outcome = await new JobClient({ base: standIn.url }).run({ image: "aGk=", task: "markdown", mode: "tiny" });
    expect(outcome).toMatchObject({ status: "COMPLETED", id: "a1", output: { pages: [{ markdown: "# Hello" }] } });
    expect(standIn.seen).toEqual([
      { method: "POST", path: "/runsync", authorization: undefined, body: { input: { image: "aGk=", task: "markdown", mode: "tiny" } } },
    ]);
  });

  it("sends the API key as a bearer token only when one is set", async () => {
    standIn = await startStandIn(() => ({ body: { id: "a1", status: "COMPLETED", output: documentOutput("x") } }));
    await new JobClient({ base: standIn.url, apiKey: "rp_secret" }).run({});
    await new JobClient({ base: standIn.url }).run({});
    expect(standIn.seen.map((request) => request.authorization)).toEqual(["Bearer rp_secret", undefined]);
  });

  it("splits a FAILED job's error string into the worker's code and message", async () => {
    standIn = await startStandIn(() => ({ body: { id: "f1", status: "FAILED", error: "invalid_image: cannot identify image file" } }));
    const outcome = await new JobClient({ base: standIn.url }).run({});
    expect(outcome).toEqual({ status: "FAILED", id: "f1", code: "invalid_image", message: "cannot identify image file" });
  });

  it("polls /status/{id} while RunPod keeps the job IN_QUEUE / IN_PROGRESS, and reports the id once", async () => {
    let polls = 0;
    standIn = await startStandIn((request) => {
      if (request.path === "/runsync") return { body: { id: "q-7", status: "IN_QUEUE" } };
      polls++;
      if (polls < 3) return { body: { id: "q-7", status: "IN_PROGRESS" } };
      return { body: { id: "q-7", status: "COMPLETED", output: documentOutput("late") } };
    });
    const accepted: string[] = [];
    const outcome = await new JobClient({ base: standIn.url }, FAST).run({}, { onAccepted: (id) => accepted.push(id) });
    expect(outcome).toMatchObject({ status: "COMPLETED", output: { markdown: "late" } });
    expect(accepted).toEqual(["q-7"]);
    expect(standIn.seen.map((request) => `${request.method} ${request.path}`)).toEqual([
      "POST /runsync",
      "GET /status/q-7",
      "GET /status/q-7",
      "GET /status/q-7",
    ]);
  });

  it("resumes a job by id with status polls only, never sending the job again", async () => {
    standIn = await startStandIn(() => ({ body: { id: "r-1", status: "COMPLETED", output: documentOutput("kept") } }));
    const outcome = await new JobClient({ base: standIn.url }, FAST).resume("r-1");
    expect(outcome.status).toBe("COMPLETED");
    expect(standIn.count("/runsync")).toBe(0);
    expect(standIn.count("/status/r-1")).toBe(1);
  });

  it("raises JobLostError when the endpoint no longer knows the job id", async () => {
    standIn = await startStandIn(() => ({ status: 404, body: { error: "job not found" } }));
    await expect(new JobClient({ base: standIn.url }, FAST).resume("gone")).rejects.toBeInstanceOf(JobLostError);
  });

  it("raises TransientJobError for 5xx, 429 and an unreachable server", async () => {
    standIn = await startStandIn(() => ({ status: 503, body: "busy" }));
    await expect(new JobClient({ base: standIn.url }).run({})).rejects.toMatchObject({ code: "http_503" });
    standIn.handler = () => ({ status: 429, body: "slow down" });
    await expect(new JobClient({ base: standIn.url }).run({})).rejects.toMatchObject({ code: "http_429" });
    const url = standIn.url;
    await standIn.close();
    standIn = undefined;
    const error = await new JobClient({ base: url }).run({}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransientJobError);
    expect((error as TransientJobError).code).toBe("network_error");
  });

  it("turns a refused key or a missing route into a FAILED verdict, not a retry", async () => {
    standIn = await startStandIn(() => ({ status: 401, body: "Unauthorized" }));
    expect(await new JobClient({ base: standIn.url }).run({})).toMatchObject({ status: "FAILED", code: "unauthorized" });
    standIn.handler = () => ({ status: 404, body: "Not Found" });
    expect(await new JobClient({ base: standIn.url }).run({})).toMatchObject({ status: "FAILED", code: "not_found" });
    standIn.handler = () => ({ status: 413, body: "too big" });
    expect(await new JobClient({ base: standIn.url }).run({})).toMatchObject({ status: "FAILED", code: "payload_too_large" });
  });

  it("reads the worker's own error shape from a refused request (the local server's 400 and 413)", async () => {
    standIn = await startStandIn(() => ({
      status: 400,
      body: { error: "invalid_input: field 'mode': must be one of 'tiny', 'gundam'", error_detail: { code: "invalid_input", field: "mode" } },
    }));
    expect(await new JobClient({ base: standIn.url }).run({})).toEqual({
      status: "FAILED",
      id: null,
      code: "invalid_input",
      message: "field 'mode': must be one of 'tiny', 'gundam'",
    });
    standIn.handler = () => ({ status: 503, body: { error: "worker_shutting_down: the worker is stopping" } });
    await expect(new JobClient({ base: standIn.url }).run({})).rejects.toMatchObject({ code: "worker_shutting_down" });
  });

  it("stops polling when its signal aborts", async () => {
    standIn = await startStandIn(() => ({ body: { id: "slow", status: "IN_PROGRESS" } }));
    const controller = new AbortController();
    const running = new JobClient({ base: standIn.url }, FAST).run({}, { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("stopped")), 50);
    await expect(running).rejects.toThrow("stopped");
    const polls = standIn.count("/status");
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(standIn.count("/status")).toBe(polls);
  });
});

describe("readJobResponse", () => {
  it("joins a streaming worker's runsync list (pages, then the document) into one document", () => {
    const reading = readJobResponse({
      id: "s",
      status: "COMPLETED",
      output: [
        { type: "page", page: 1, markdown: "one" },
        { type: "document", markdown: "one", page_count: 1 },
      ],
    });
    expect(reading).toMatchObject({ pending: false, outcome: { status: "COMPLETED", output: { page_count: 1, pages: [{ markdown: "one" }] } } });
  });

  it("reports COMPLETED without an output (RunPod's too-large result) as output_missing", () => {
    expect(readJobResponse({ id: "x", status: "COMPLETED" })).toMatchObject({ outcome: { status: "FAILED", code: "output_missing" } });
  });

  it("treats an output with an error key as the failed job it is", () => {
    expect(readJobResponse({ id: "x", status: "COMPLETED", output: { error: "too_many_pages: 120 > 100" } })).toMatchObject({
      outcome: { status: "FAILED", code: "too_many_pages", message: "120 > 100" },
    });
  });

  it("maps RunPod's CANCELLED and TIMED_OUT to failed verdicts", () => {
    expect(readJobResponse({ id: "x", status: "TIMED_OUT" })).toMatchObject({ outcome: { status: "FAILED", code: "timed_out" } });
    expect(readJobResponse({ id: "x", status: "CANCELLED" })).toMatchObject({ outcome: { status: "FAILED", code: "cancelled" } });
  });
});

describe("parseJobError", () => {
  it("reads runpod's JSON-wrapped handler exception", () => {
    expect(parseJobError(JSON.stringify({ error_type: "ValueError", error_message: "model_error: CUDA failed" }))).toEqual({
      code: "model_error",
      message: "CUDA failed",
    });
  });

  it("keeps an error without a code as job_failed with its whole text", () => {
    expect(parseJobError("Something broke: badly")).toEqual({ code: "job_failed", message: "Something broke: badly" });
  });
});
