"""The bulk client (`python -m worker.bulk`) against runpod's real local API over HTTP, through a
counting proxy on 127.0.0.1; and its planning and joining as pure functions on real PDFs."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageColor, ImageDraw

from tests.helpers import ROOT, FileServer, LocalApi, b64, encode, make_pdf, send_bytes, text_page
from worker.bulk import PAGE_SPLIT, Document, JobFailure, JobOptions, Part, join_parts, plan_parts

OPTIONS = ["--mode", "tiny", "--task", "ocr"]


class CountingProxy:
    """A real HTTP proxy on 127.0.0.1 in front of the local API. It counts the requests it forwards per
    route ("POST /run"), keeps the Authorization headers it saw, and answers the requests listed in
    `faults` ((method, path, HTTP status[, JSON body]), each used once, in order) itself instead of
    forwarding them: errors, or answers RunPod's cloud gives and the local API never does.
    While `holding`, /status requests are held unanswered (the jobs stay stored upstream, as queued jobs
    do on RunPod) until `released`, then answered 503 without being forwarded."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.injected: list[str] = []
        self.auth: set[str | None] = set()
        self.faults: list[tuple] = []
        self.holding = False
        self.held = 0
        self.released = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as RunPod's API serves the client's session

            def do_GET(self):  # noqa: N802 (http.server's naming)
                proxy._relay(self, "GET")

            def do_POST(self):  # noqa: N802
                proxy._relay(self, "POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _relay(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        route = f"{method} /{handler.path.lstrip('/').split('/')[0]}"
        with self._lock:
            self.auth.add(handler.headers.get("Authorization"))
            fault = next((f for f in self.faults if f[:2] == (method, route.split()[1])), None)
            if fault:
                self.faults.remove(fault)
                self.injected.append(f"{route} {fault[2]}")
        if self.holding and route.endswith(" /status"):
            with self._lock:
                self.held += 1
            self.released.wait(timeout=60)
            fault = ("", "", 503)
        if fault:
            body = fault[3] if len(fault) > 3 else {"error": "injected by the test proxy"}
            status, payload = fault[2], json.dumps(body).encode()
        else:
            response = requests.request(method, self.upstream + handler.path, data=body, timeout=300,
                                        headers={"Content-Type": "application/json"})
            status, payload = response.status_code, response.content
            with self._lock:
                self.forwarded[route] += 1
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def marked_page(k: int, lines: list[str]) -> Image.Image:
    """A text page with a coloured block whose hue and place depend on k: the tiny random model's output
    is a fingerprint of the pixels, and text alone at this size gives every page the same one."""
    image = text_page(lines, size=(640, 480), font_px=60)
    draw = ImageDraw.Draw(image)
    x = 20 + 60 * (k % 5)
    draw.rectangle((x, 260, x + 300, 440), fill=ImageColor.getrgb(f"hsv({(k * 67) % 360},90%,85%)"))
    return image


def run_bulk(folder: Path, out: Path, base_url: str, *extra: str, key: str = "test-key", wait: bool = True,
             ) -> subprocess.Popen | subprocess.CompletedProcess:
    args = [sys.executable, "-m", "worker.bulk", str(folder), "--base-url", base_url, "--out", str(out),
            *OPTIONS, "--poll-interval", "0.2", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNPOD_API_KEY": key}
    if wait:
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_documents(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.json") if ".ocr-bulk" not in p.parts]


@pytest.fixture(scope="module")
def api(tiny_checkpoint):
    # runpod logs every output at DEBUG into the server's stdout pipe, which nobody reads: a full pipe
    # blocks the server after a few dozen jobs.
    server = LocalApi(tiny_checkpoint, MAX_TOKENS="8", RUNAWAY_RETRY="false", WARMUP="false",
                      RUNPOD_LOG_LEVEL="ERROR")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Ten documents: five images, three short PDFs (one in a subfolder), a five-page report that must be
    split at two pages per job, and a PDF that is not one."""
    root = tmp_path_factory.mktemp("scans")
    for k in range(5):
        suffix, fmt = (".jpg", "JPEG") if k == 2 else (".png", "PNG")
        (root / f"photo-{k}{suffix}").write_bytes(encode(marked_page(k, [f"Photo {k}"]), fmt))
    (root / "letter-1.pdf").write_bytes(make_pdf([marked_page(10, ["Letter one"])]))
    (root / "letter-2.pdf").write_bytes(make_pdf([marked_page(11, ["Letter two"]), marked_page(12, ["p2"])]))
    (root / "sub").mkdir()
    (root / "sub" / "memo.pdf").write_bytes(make_pdf([marked_page(13, ["Memo"])]))
    (root / "report.pdf").write_bytes(make_pdf([marked_page(20 + k, [f"Report page {k + 1}"]) for k in range(5)]))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n" + bytes(random.Random(7).randrange(256) for _ in range(600)))
    return root


JOBS = 5 + 3 + 3 + 1  # one per image and short PDF, three for the report (pages 1-2, 3-4, 5), one for broken.pdf


@pytest.mark.process
def test_interrupted_run_resumes_without_submitting_anything_twice(api, folder, tmp_path):
    """Ten documents; stopped after two, resumed through injected 503/429 answers, then run a third time."""
    proxy = CountingProxy(api.url)
    out = tmp_path / "out"
    try:
        first = run_bulk(folder, out, proxy.url, "--concurrency", "2", "--max-pages-per-job", "2", wait=False)
        deadline = time.time() + 120
        while len(finished_documents(out)) < 2 and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)  # drains like Ctrl-C (SIGINT may be ignored in a background child)
        _, first_err = first.communicate(timeout=120)
        assert first.returncode == 130, first_err
        assert "interrupted" in first_err
        submitted_first = proxy.forwarded["POST /run"]
        done_first = {p.relative_to(out) for p in finished_documents(out)}
        assert 2 <= len(done_first) < 9 and 1 <= submitted_first < JOBS

        # The resumed run meets a 503 on /run and a 429 on /status: both retried with back-off.
        proxy.faults += [("POST", "/run", 503), ("POST", "/status", 429)]
        second = run_bulk(folder, out, proxy.url, "--concurrency", "4", "--max-pages-per-job", "2")
        assert second.returncode == 1, second.stderr  # broken.pdf failed
        assert proxy.injected == ["POST /run 503", "POST /status 429"]
        # Every part was submitted exactly once over both runs: nothing done (or journaled) went again.
        assert proxy.forwarded["POST /run"] == JOBS, (submitted_first, proxy.forwarded)
        log = [json.loads(line) for line in (out / ".ocr-bulk" / "submitted.jsonl").read_text().splitlines()]
        assert len(log) == len({(e["document"], e["part"]) for e in log}) == JOBS
        assert proxy.auth == {"Bearer test-key"}
        # Local /status is POST only: the client tried GET once, got 405, and switched.
        assert proxy.forwarded["GET /status"] >= 1
        assert proxy.forwarded["POST /status"] >= JOBS

        # A third run finds everything done or permanently failed, submits nothing, and still fails.
        third = run_bulk(folder, out, proxy.url, "--max-pages-per-job", "2")
        assert third.returncode == 1 and proxy.forwarded["POST /run"] == JOBS
    finally:
        proxy.close()

    done = sorted(p.relative_to(out).as_posix() for p in finished_documents(out))
    assert done == sorted([f"photo-{k}.{'jpg' if k == 2 else 'png'}.json" for k in range(5)]
                          + ["letter-1.pdf.json", "letter-2.pdf.json", "sub/memo.pdf.json", "report.pdf.json"])
    assert not list((out / ".ocr-bulk" / "jobs").iterdir())  # no job left pending
    for line in (second.stderr, third.stderr):
        assert "FAILED broken.pdf: invalid_pdf: field 'pdf'" in line and "(job test-" in line
    assert "docs 10/10 | pages" in second.stderr and "failed 1" in second.stderr
    recorded = json.loads((out / ".ocr-bulk" / "last-run.json").read_text())
    assert recorded["submitted"] == 0 and recorded["failed"]["broken.pdf"]["code"] == "invalid_pdf"

    # The split report reads as one document: five pages in order, the text of the unsplit PDF.
    report = json.loads((out / "report.pdf.json").read_text())
    assert report["page_count"] == 5 == len(report["pages"])
    assert [p["page"] for p in report["pages"]] == [1, 2, 3, 4, 5]
    assert [p["source"] for p in report["pages"]] == [f"pdf#{n}" for n in range(1, 6)]
    texts = [p["text"] for p in report["pages"]]
    assert len(set(texts)) == 5, "the fingerprints must tell the pages apart"
    assert report["text"].split(PAGE_SPLIT) == texts == (out / "report.pdf.md").read_text().split(PAGE_SPLIT)
    whole = api.post("/runsync", {"input": {"pdf": b64((folder / "report.pdf").read_bytes()), "mode": "tiny",
                                            "task": "ocr"}})
    assert [p["text"] for p in whole["output"]["pages"]] == texts
    memo = json.loads((out / "sub" / "memo.pdf.json").read_text())
    assert memo["page_count"] == 1 and (out / "sub" / "memo.pdf.md").read_text() == memo["text"]


@pytest.mark.process
def test_jobs_of_a_killed_client_are_polled_on_resume_not_submitted_again(api, tmp_path):
    """A client killed while its jobs wait in the queue (the proxy holds their /status answers) leaves
    them journaled; the next run reads them with /status and submits nothing."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        (folder / f"scan-{k}.png").write_bytes(encode(marked_page(30 + k, [f"Scan {k}"]), "PNG"))
    out = tmp_path / "out"
    proxy = CountingProxy(api.url)
    proxy.holding = True
    try:
        first = run_bulk(folder, out, proxy.url, "--concurrency", "3", wait=False)
        deadline = time.time() + 60
        while proxy.held < 3 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proxy.held == 3 and proxy.forwarded["POST /run"] == 3
        first.kill()
        first.communicate(timeout=30)
        assert len(list((out / ".ocr-bulk" / "jobs").iterdir())) == 3
        proxy.holding = False
        proxy.released.set()

        second = run_bulk(folder, out, proxy.url)
        assert second.returncode == 0, second.stderr
        assert proxy.forwarded["POST /run"] == 3 and proxy.forwarded["POST /status"] == 3
    finally:
        proxy.close()
    assert json.loads((out / ".ocr-bulk" / "last-run.json").read_text())["submitted"] == 0
    assert sorted(p.name for p in finished_documents(out)) == [f"scan-{k}.png.json" for k in range(3)]
    assert not list((out / ".ocr-bulk" / "jobs").iterdir())


@pytest.mark.process
def test_cloud_answers_timed_out_cancelled_lost_uploaded_and_refused(api, tmp_path):
    """Answers RunPod gives and the local API does not, injected by the proxy, one job at a time:
    TIMED_OUT is submitted again; CANCELLED is reported and left to the next run; a job the server no
    longer knows is submitted again; a result uploaded to storage is read from its URL; a refused
    API key stops the run."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, k in (("a.png", 40), ("b.png", 41), ("c.png", 42)):
        (folder / name).write_bytes(encode(marked_page(k, [name]), "PNG"))
    uploaded = {"type": "document", "task": "ocr", "mode": "tiny", "text": "read from storage", "page_count": 1,
                "failed_pages": 0, "finish_reason": "stop",
                "pages": [{"type": "page", "page": 1, "source": "image", "text": "read from storage"}]}
    storage = FileServer({"/result.json": send_bytes(json.dumps(uploaded).encode(), "application/json")})
    proxy = CountingProxy(api.url)
    out = tmp_path / "out"
    try:
        proxy.faults.append(("POST", "/run", 401))
        refused = run_bulk(folder, out, proxy.url, "--concurrency", "1")
        assert refused.returncode == 2 and "refused the API key (HTTP 401)" in refused.stderr
        assert proxy.forwarded["POST /run"] == 0

        proxy.faults += [
            ("POST", "/status", 200, {"id": "x", "status": "TIMED_OUT"}),  # a.png, first job
            ("POST", "/status", 200, {"id": "x", "status": "CANCELLED"}),  # a.png, second job
            ("POST", "/status", 200, {"id": "x", "status": "FAILED", "error": "Job ID not found"}),  # b.png
            ("POST", "/status", 200, {"id": "x", "status": "COMPLETED", "output": {  # b.png, second job
                "type": "document", "page_count": 1, "output_url": storage.url + "/result.json"}}),
        ]
        first = run_bulk(folder, out, proxy.url, "--concurrency", "1")
        assert first.returncode == 1, first.stderr
        assert "FAILED a.png: cancelled:" in first.stderr and "a run started again retries it" in first.stderr
        assert proxy.forwarded["POST /run"] == 5 and not proxy.faults
        b = json.loads((out / "b.png.json").read_text())
        assert b == uploaded and (out / "b.png.md").read_text() == "read from storage"
        assert json.loads((out / "c.png.json").read_text())["pages"][0]["source"] == "image"

        second = run_bulk(folder, out, proxy.url)  # a.png was cancelled, not failed: submitted again
        assert second.returncode == 0, second.stderr
        assert proxy.forwarded["POST /run"] == 6 and (out / "a.png.json").is_file()
    finally:
        proxy.close()
        storage.close()


def noise_pdf(pages: int) -> bytes:
    """Pages of random pixels: each embeds a large image, so a page's share of the PDF is known."""
    rng = random.Random(3)
    images = [Image.frombytes("RGB", (200, 200), bytes(rng.randrange(256) for _ in range(200 * 200 * 3)))
              for _ in range(pages)]
    return make_pdf(images)


def test_plan_parts_halves_page_ranges_until_each_body_fits(tmp_path):
    path = tmp_path / "noise.pdf"
    path.write_bytes(noise_pdf(6))
    document = Document(path=path, rel="noise.pdf", kind="pdf", page_count=6)
    options = JobOptions(mode="tiny", task="ocr")
    one_page = max(len(Part(document, n, n, whole=False).payload()) for n in range(1, 7))
    limit = options.body_size("pdf", one_page) + 100  # one page fits, two do not

    parts = plan_parts(document, options, max_pages=4, max_payload=limit)
    assert [(p.first, p.last) for p in parts] == [(n, n) for n in range(1, 7)]
    for part in parts:
        body = json.dumps({"input": options.job_input("pdf", part.payload())})
        assert len(body) <= limit

    roomy = plan_parts(document, options, max_pages=4, max_payload=10 * limit)
    assert [(p.first, p.last, p.whole) for p in roomy] == [(1, 4, False), (5, 6, False)]
    assert plan_parts(document, options, max_pages=6, max_payload=10 * limit) == [Part(document, 1, 6, whole=True)]
    with pytest.raises(JobFailure, match="page 1 alone") as failed:
        plan_parts(document, options, max_pages=4, max_payload=limit // 2)
    assert failed.value.code == "payload_too_large" and failed.value.kind == "permanent"


def test_an_image_over_the_payload_limit_fails_before_any_job(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(text_page(["big"]), "PNG"))
    document = Document(path=path, rel="big.png", kind="image", page_count=1)
    with pytest.raises(JobFailure) as failed:
        plan_parts(document, JobOptions(mode="tiny", task="ocr"), max_pages=20, max_payload=1000)
    assert failed.value.code == "payload_too_large"


def test_join_parts_renumbers_pages_and_sums_counts(tmp_path):
    document = Document(path=tmp_path / "d.pdf", rel="d.pdf", kind="pdf", page_count=3)

    def output(texts, finish):
        return {"type": "document", "task": "ocr", "mode": "tiny", "text": PAGE_SPLIT.join(texts),
                "page_count": len(texts), "failed_pages": 0, "finish_reason": finish,
                "usage": {"prompt_tokens": 10 * len(texts), "completion_tokens": 2 * len(texts)},
                "timings": {"total_s": 1.5},
                "pages": [{"type": "page", "page": n + 1, "source": f"pdf#{n + 1}", "text": t}
                          for n, t in enumerate(texts)]}

    joined = join_parts([(Part(document, 3, 3, whole=False), output(["c"], "length")),
                         (Part(document, 1, 2, whole=False), output(["a", "b"], "stop"))])
    assert joined["text"] == PAGE_SPLIT.join(["a", "b", "c"]) and joined["page_count"] == 3
    assert [(p["page"], p["source"], p["text"]) for p in joined["pages"]] == [(1, "pdf#1", "a"), (2, "pdf#2", "b"),
                                                                           (3, "pdf#3", "c")]
    assert joined["usage"] == {"prompt_tokens": 30, "completion_tokens": 6}
    assert joined["finish_reason"] == "length" and joined["timings"] == {"total_s": 3.0}
