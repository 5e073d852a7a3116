"""Every way to call the DeepSeek-OCR-2 worker: the runpod SDK (run_sync, run with status polling,
streaming) and plain HTTP (/runsync, /run + /status, /stream), for an image and for a PDF.

    export RUNPOD_API_KEY=... RUNPOD_ENDPOINT_ID=...
    python example_client.py --image page.png --pdf report.pdf
    python example_client.py --base-url http://localhost:8000 --image page.png   # local --rp_serve_api

Honest about the SDK's quirks: a failed `run_sync` returns None and loses the error, so this client
then asks /status for it; against the local API, `status()`/`stream()` use GET, which the local
server answers with 405, so the local path polls and streams with POST.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import requests

CLOUD_BASE = "https://api.runpod.ai/v2"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class JobFailed(RuntimeError):
    """The worker's error string: it starts with a stable code ("invalid_input: field 'mode': ...")."""


def encode_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def image_job(path: Path, **options: Any) -> dict:
    return {"image": encode_file(path), **options}


def pdf_job(path: Path, **options: Any) -> dict:
    return {"pdf": encode_file(path), **options}


class HttpClient:
    """Plain HTTP against RunPod (/v2/<endpoint>/...) or a local `--rp_serve_api` (base URL)."""

    def __init__(self, base_url: str, api_key: str | None, local: bool):
        self.base = base_url.rstrip("/")
        self.local = local
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> dict:
        response = self.session.request(method, self.base + path, json=body, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def _poll_method(self) -> str:
        # The local API runs a stored job when /status or /stream is POSTed; RunPod uses GET.
        return "POST" if self.local else "GET"

    def runsync(self, job_input: dict) -> Any:
        body = self._call("POST", "/runsync", {"input": job_input}, timeout=300)
        if body.get("status") == "IN_PROGRESS":  # RunPod hands long jobs back after ~90 s
            body = self.wait(body["id"])
        return _output_or_raise(body)

    def run(self, job_input: dict) -> str:
        return self._call("POST", "/run", {"input": job_input})["id"]

    def status(self, job_id: str) -> dict:
        return self._call(self._poll_method(), f"/status/{job_id}", timeout=600)

    def wait(self, job_id: str, poll_s: float = 2.0, timeout_s: float = 1800) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.status(job_id)
            if body.get("status") in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {body.get('status')} after {timeout_s}s")
            time.sleep(poll_s)

    def stream(self, job_id: str) -> Iterator[dict]:
        """Page results as the worker yields them (the endpoint needs STREAM_PAGES=true)."""
        while True:
            body = self._call(self._poll_method(), f"/stream/{job_id}", timeout=600)
            if body.get("status") == "FAILED":
                raise JobFailed(body.get("error", "stream failed"))
            for item in body.get("stream", []):
                output = item.get("output", item)
                if isinstance(output, dict) and "error" in output:
                    raise JobFailed(output["error"])
                yield output
            if body.get("status") in TERMINAL or self.local:  # the local API answers once, at the end
                return


def _output_or_raise(body: dict) -> Any:
    if body.get("status") != "COMPLETED":
        raise JobFailed(body.get("error") or f"job ended {body.get('status')}")
    return raise_for_error(body["output"])


def raise_for_error(output: Any) -> Any:
    """A streaming worker's failure is its last item, `{"error": ...}`; RunPod marks such a job
    FAILED, but runpod's local API reports it COMPLETED with the error inside the output list."""
    items = output if isinstance(output, list) else [output]
    for item in items:
        if isinstance(item, dict) and "error" in item:
            raise JobFailed(item["error"])
    return output


def sdk_examples(job_input: dict, api_key: str | None, endpoint_id: str, base_url: str | None) -> None:
    """The runpod SDK. Locally it needs runpod.endpoint_url_base and endpoint id '.'."""
    import runpod

    runpod.api_key = api_key or "local"
    if base_url:
        runpod.endpoint_url_base = base_url.rstrip("/")
        endpoint_id = "."
    endpoint = runpod.Endpoint(endpoint_id)

    output = endpoint.run_sync(job_input, timeout=300)  # the SDK wraps it in {"input": ...}
    if output is None:
        # run_sync gives None for a failed job; the reason is only in /status.
        http = HttpClient(base_url or f"{CLOUD_BASE}/{endpoint_id}", api_key, local=bool(base_url))
        job_id = http.run(job_input)
        raise JobFailed(http.wait(job_id).get("error", "unknown error"))
    show("SDK run_sync", raise_for_error(output))

    if not base_url:  # the local API answers the SDK's GET status/stream with 405
        job = endpoint.run(job_input)
        while job.status() not in TERMINAL:
            time.sleep(2)
        show("SDK run + status", raise_for_error(job.output()))
        for item in endpoint.run(job_input).stream():
            show("SDK stream item", item)


def http_examples(http: HttpClient, job_input: dict, stream: bool) -> None:
    show("HTTP /runsync", http.runsync(job_input))
    job_id = http.run(job_input)
    show("HTTP /run + /status", _output_or_raise(http.wait(job_id)))
    if stream:
        for item in http.stream(http.run(job_input)):
            show(f"HTTP /stream {item.get('type')}", item)


def show(label: str, output: Any) -> None:
    items = output if isinstance(output, list) else [output]
    for item in items:
        text = item.get("markdown") if item.get("markdown") is not None else item.get("text", "")
        where = f"page {item['page']}" if item.get("type") == "page" else f"{item.get('page_count', '?')} page(s)"
        print(f"[{label}] {where}, finish={item.get('finish_reason')}: {text[:200]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="an image file to OCR")
    parser.add_argument("--pdf", type=Path, help="a PDF file to OCR")
    parser.add_argument("--mode", default="gundam")
    parser.add_argument("--task", default="markdown")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--base-url", help="a local `python -m worker --rp_serve_api` (e.g. http://localhost:8000)")
    parser.add_argument("--stream", action="store_true", help="also read /stream (needs STREAM_PAGES=true)")
    parser.add_argument("--only", choices=("sdk", "http"), help="run one client kind")
    args = parser.parse_args(argv)

    api_key = os.environ.get("RUNPOD_API_KEY")
    endpoint_id = os.environ.get("RUNPOD_ENDPOINT_ID", "")
    if not args.base_url and not (api_key and endpoint_id):
        parser.error("set RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID, or pass --base-url")
    if not (args.image or args.pdf):
        parser.error("give --image and/or --pdf")
    options = {"mode": args.mode, "task": args.task}
    if args.max_tokens:
        options["max_tokens"] = args.max_tokens
    jobs = []
    if args.image:
        jobs.append(image_job(args.image, **options))
    if args.pdf:
        jobs.append(pdf_job(args.pdf, **options))

    base = args.base_url or f"{CLOUD_BASE}/{endpoint_id}"
    http = HttpClient(base, api_key, local=bool(args.base_url))
    try:
        for job_input in jobs:
            if args.only in (None, "sdk"):
                sdk_examples(job_input, api_key, endpoint_id, args.base_url)
            if args.only in (None, "http"):
                http_examples(http, job_input, args.stream)
    except JobFailed as exc:
        print(f"job failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
