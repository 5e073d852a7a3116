"""Call the DeepSeek-OCR-2 worker: ONE job per file, in the calling style you pick, with the full result
saved as JSON. For folders and large PDFs use the bulk client instead (`ocr-bulk`, worker/bulk.py).

Install: `pip install requests` (the runsync, run and stream styles); add `pip install runpod` for
`--style sdk` and `pip install openai` for `--style openai`.

    export RUNPOD_API_KEY=... RUNPOD_ENDPOINT_ID=...
    python example_client.py page.png report.pdf                  # one /run job each, polled on /status
    python example_client.py --style runsync page.png --out results/
    python example_client.py --base-url http://127.0.0.1:8000 page.png   # a local server (below)

Styles (one job per file whichever you pick):
- run (default): POST /run, then poll /status until the job ends (RunPod keeps the result 30 min);
- runsync: POST /runsync (RunPod answers within about 90 s, else hands back the id: then /status);
- stream: POST /run, then read /stream page by page (the endpoint needs STREAM_PAGES=true);
- sdk: the runpod package (`Endpoint.run`, `Job.status`, `Job.output`);
- openai: the openai package on the OpenAI-compatible route (`<endpoint>/openai/v1`; locally
  `python -m worker.server`'s `/v1`); tasks `ocr` and `markdown` only.

A failed job's error (it starts with the worker's stable code, e.g. `invalid_pdf: ...`) is read from the
answer that ended the job, /runsync's or /status's; the job is never run again to learn why. The SDK
hides it (`Job.output()` is None for a failed job), so this client then reads /status over plain HTTP.

Local servers: `python -m worker --rp_serve_api` (runpod's own local API: /status and /stream are POST
only, so this client falls back to POST on 405; a /run job runs only when /status or /stream is
polled; a result can be read once; it cannot serve --style sdk, whose polls are GET) and
`python -m worker.server` (all styles).

Each result is saved as `<file>.json` (the job's whole output) next to the file, or in --out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

CLOUD_BASE = "https://api.runpod.ai/v2"
STYLES = ("run", "runsync", "stream", "sdk", "openai")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
OPENAI_PROMPTS = {"ocr": "Free OCR.", "markdown": "<|grounding|>Convert the document to markdown."}


class JobFailed(RuntimeError):
    """The worker's error string: it starts with a stable code ("invalid_input: field 'mode': ...")."""


def job_input(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    data = path.read_bytes()
    field = "pdf" if data[:1024].find(b"%PDF-") >= 0 else "image"  # the worker sniffs the bytes the same way
    return {field: base64.b64encode(data).decode("ascii"), **options}


class Http:
    """Plain HTTP against RunPod (`/v2/<endpoint>/...`) or a local server (`--base-url`)."""

    def __init__(self, base: str, api_key: str | None, poll_s: float, timeout_s: float):
        self.base = base.rstrip("/")
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.read_method = "GET"  # RunPod's; runpod's local API answers GET with 405

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self.session.post(self.base + path, json=body, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def read(self, path: str) -> dict:
        """GET /status or /stream, or POST where the server allows only that."""
        response = self.session.request(self.read_method, self.base + path, timeout=self.timeout_s)
        if response.status_code == 405 and self.read_method == "GET":
            self.read_method = "POST"
            return self.read(path)
        response.raise_for_status()
        return response.json()

    def wait(self, answer: dict) -> dict:
        """Poll /status until the job of `answer` ends; returns the answer that ended it."""
        deadline = time.monotonic() + self.timeout_s
        while answer.get("status") not in TERMINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {answer.get('id')} still {answer.get('status')} after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)
            answer = self.read(f"/status/{answer['id']}")
        return answer


def output_or_raise(answer: dict) -> Any:
    """The output of a job's final answer, or JobFailed with its error. A streaming worker's failure is
    its last item, `{"error": ...}`; RunPod marks such a job FAILED, runpod's local API COMPLETED."""
    if answer.get("status") != "COMPLETED":
        raise JobFailed(answer.get("error") or f"job {answer.get('id')} ended {answer.get('status')}")
    output = answer.get("output")
    for item in output if isinstance(output, list) else [output]:
        if isinstance(item, dict) and "error" in item:
            raise JobFailed(item["error"])
    return output


def call_run(http: Http, job: dict) -> Any:
    return output_or_raise(http.wait(http.post("/run", {"input": job})))


def call_runsync(http: Http, job: dict) -> Any:
    return output_or_raise(http.wait(http.post("/runsync", {"input": job})))


def call_stream(http: Http, job: dict) -> list:
    job_id = http.post("/run", {"input": job})["id"]
    items: list = []
    while True:
        answer = http.read(f"/stream/{job_id}")
        for chunk in answer.get("stream") or []:
            item = chunk.get("output", chunk)
            if isinstance(item, dict) and "error" in item:
                raise JobFailed(item["error"])
            items.append(item)
            if isinstance(item, dict) and item.get("type") == "page":
                print(f"  page {item.get('page')} streamed", file=sys.stderr)
        if answer.get("status") == "FAILED":
            raise JobFailed(answer.get("error") or "stream failed")
        if answer.get("status") in TERMINAL:
            return items
        time.sleep(http.poll_s)


def call_sdk(http: Http, job: dict, endpoint_id: str, api_key: str | None, local: bool) -> Any:
    import runpod

    runpod.api_key = api_key or "local"
    if local:
        runpod.endpoint_url_base = http.base
        endpoint_id = "."  # the SDK builds <endpoint_url_base>/<endpoint_id>/run
    handle = runpod.Endpoint(endpoint_id).run(job)
    deadline = time.monotonic() + http.timeout_s
    while (status := handle.status()) not in TERMINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {handle.job_id} still {status} after {http.timeout_s:.0f} s")
        time.sleep(http.poll_s)
    if status == "COMPLETED":
        return output_or_raise({"status": status, "output": handle.output()})
    # The SDK keeps only the status of a failed job; /status holds its error (read, not re-run).
    raise JobFailed(http.read(f"/status/{handle.job_id}").get("error") or f"job ended {status}")


def call_openai(job: dict, base: str, api_key: str | None, task: str, timeout_s: float) -> dict:
    import openai

    if task not in OPENAI_PROMPTS:
        raise SystemExit(f"--style openai reads tasks {sorted(OPENAI_PROMPTS)}; use another style for {task!r}")
    kind, data = ("pdf", job["pdf"]) if "pdf" in job else ("image", job["image"])
    url = f"data:application/pdf;base64,{data}" if kind == "pdf" else f"data:image/png;base64,{data}"
    client = openai.OpenAI(base_url=base, api_key=api_key or "local", timeout=timeout_s, max_retries=0)
    try:
        completion = client.chat.completions.create(
            model="deepseek-ocr", extra_body={"mode": job["mode"]},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": OPENAI_PROMPTS[task]}]}],
            **({"max_tokens": job["max_tokens"]} if "max_tokens" in job else {}))
    except openai.APIError as exc:  # the worker's code rides in OpenAI's error object
        raise JobFailed(f"{exc.code or type(exc).__name__}: {exc.message}") from None
    return completion.model_dump()


def show(path: Path, output: Any) -> None:
    items = output if isinstance(output, list) else [output]
    document = next((i for i in reversed(items) if isinstance(i, dict) and i.get("type") == "document"), None)
    if document is not None:
        text = document.get("markdown") if document.get("markdown") is not None else document.get("text", "")
        print(f"{path}: {document.get('page_count')} page(s), finish={document.get('finish_reason')}: {text[:200]!r}")
    elif isinstance(output, dict) and output.get("choices"):
        print(f"{path}: {output['choices'][0]['message']['content'][:200]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Install: pip install requests (runpod for --style sdk, openai for "
                                            "--style openai). Set RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID, or "
                                            "pass --base-url for a local server.")
    parser.add_argument("files", nargs="+", type=Path, help="images or PDFs; one job each")
    parser.add_argument("--style", choices=STYLES, default="run", help="how to call (default %(default)s)")
    parser.add_argument("--mode", default="gundam")
    parser.add_argument("--task", default="markdown")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--base-url", help="a local server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--endpoint-id", default=os.environ.get("RUNPOD_ENDPOINT_ID"),
                        help="RunPod endpoint id (default: $RUNPOD_ENDPOINT_ID)")
    parser.add_argument("--out", type=Path, help="folder for the <file>.json results (default: next to each file)")
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one job")
    args = parser.parse_args(argv)

    api_key = os.environ.get("RUNPOD_API_KEY")
    if not args.base_url and not (api_key and args.endpoint_id):
        parser.error("set RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID (or --endpoint-id), or pass --base-url")
    base = args.base_url or f"{CLOUD_BASE}/{args.endpoint_id}"
    http = Http(base, api_key, args.poll_interval, args.timeout)
    options: dict[str, Any] = {"mode": args.mode, "task": args.task}
    if args.max_tokens:
        options["max_tokens"] = args.max_tokens

    failed = 0
    for path in args.files:
        job = job_input(path, options)
        try:
            if args.style == "sdk":
                output = call_sdk(http, job, args.endpoint_id or "", api_key, local=bool(args.base_url))
            elif args.style == "openai":
                openai_base = f"{base.rstrip('/')}/v1" if args.base_url else f"{base}/openai/v1"
                output = call_openai(job, openai_base, api_key, args.task, args.timeout)
            else:
                output = {"run": call_run, "runsync": call_runsync, "stream": call_stream}[args.style](http, job)
        except (JobFailed, TimeoutError, requests.RequestException) as exc:
            print(f"{path}: job failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        target = (args.out or path.parent) / f"{path.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(output, ensure_ascii=False, indent=1), encoding="utf-8")
        show(path, output)
        print(f"  saved {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
