"""The original DeepSeek-OCR FastAPI service's routes on `python -m worker.server`, called with
`requests` as its README calls them (multipart `file`, `mode`/`prompt` in the query, `mode` as a form
field in its quick start), plus the server's RunPod-style job routes, its limits, and the sharing of
engine batches between concurrent requests of different doors. Each answer is compared with the
`/runsync` answer for the same file, task and mode: the tiny random model's greedy text is a
fingerprint of its input, so equal text means the route sent the same pixels, prompt and mode."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import b64, encode, make_pdf, text_page
from tests.helpers import WorkerServer
from worker.errors import ConfigError, InvalidInput
from worker.grounding import PAGE_SEPARATOR
from worker.server import ServerConfig, original_job_input, read_run_body
from worker.settings import Settings

MAX_REQUEST_BYTES = 400_000
process = pytest.mark.process


def test_an_upload_is_a_pdf_by_its_header_and_the_two_modes_must_agree():
    assert set(original_job_input(b"junk\n%PDF-1.7 ...", None, "base")) == {"pdf", "mode"}
    assert original_job_input(b"\x89PNG...", "tiny", None) == {"image": b64(b"\x89PNG..."), "mode": "tiny"}
    assert "mode" not in original_job_input(b"\x89PNG...", None, None)  # the service's DEFAULT_MODE
    assert set(original_job_input(b"x" * 2000 + b"%PDF-", None, None)) == {"image"}  # past the header window
    for data, query, form, field in ((b"", None, None, "file"), (b"x", "base", "tiny", "mode")):
        with pytest.raises(InvalidInput) as exc:
            original_job_input(data, query, form)
        assert exc.value.field == field


def test_run_bodies_and_server_settings():
    assert read_run_body({"input": {"image": "x"}, "policy": {"ttl": 1}}) == {"image": "x"}
    for body, field in (({"inputs": {}}, "inputs"), ({"input": {}, "webhook": "https://x"}, "webhook"), ({}, "input")):
        with pytest.raises(InvalidInput) as exc:
            read_run_body(body)
        assert exc.value.field == field
    settings = Settings.from_env({"MAX_INPUT_BYTES": "3000000"})
    assert ServerConfig.from_settings(settings).max_request_bytes == 4_000_000 + 1024 * 1024
    limited = Settings.from_env({"MAX_INPUT_BYTES": "3000000", "MAX_REQUEST_BYTES": "5000"})
    assert ServerConfig.from_settings(limited).max_request_bytes == 5000
    with pytest.raises(ConfigError, match="RESULT_TTL_S"):
        Settings.from_env({"RESULT_TTL_S": "soon"})


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    folder = tmp_path_factory.mktemp("webui")
    (folder / "index.html").write_text("<!doctype html><title>OCR</title>")
    return folder


@pytest.fixture(scope="module")
def server(tiny_checkpoint, webui):
    # BATCH_WAIT_MS: the batcher waits for concurrent requests to fill a batch (the sharing test).
    running = WorkerServer(tiny_checkpoint, MAX_TOKENS="8", BATCH_WAIT_MS="200",
                           MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES), WEBUI_DIR=str(webui))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page() -> bytes:
    return encode(text_page(["Original API", "DeepSeek-OCR service"], size=(700, 500)), "PNG")


def post_file(server, path: str, data: bytes, name: str = "document.jpg", **kwargs) -> requests.Response:
    return requests.post(server.url + path, files={"file": (name, data)}, timeout=300, **kwargs)


def runsync_output(server, **job_input) -> dict:
    body = server.runsync(job_input)
    assert body["status"] == "COMPLETED", body
    return body["output"]


@process
def test_free_ocr_as_the_readme_example(server, page):
    # curl -X POST "http://localhost:8000/ocr/free?mode=gundam" -F "file=@document.jpg"
    response = post_file(server, "/ocr/free?mode=gundam", page)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"text", "mode"} and body["mode"] == "gundam"
    assert body["text"] == runsync_output(server, image=b64(page), task="ocr", mode="gundam")["text"]


@process
def test_mode_as_a_form_field_as_the_quick_start_sends_it(server, page):
    # curl -X POST "http://localhost:8000/ocr/free" -F "file=@your_image.jpg" -F "mode=gundam"
    response = requests.post(server.url + "/ocr/free", files={"file": ("your_image.jpg", page)},
                             data={"mode": "tiny"}, timeout=300)
    assert response.json() == {"text": runsync_output(server, image=b64(page), task="ocr", mode="tiny")["text"],
                               "mode": "tiny"}
    default = post_file(server, "/ocr/free", page).json()
    assert default["mode"] == "gundam"  # the service's default, as the original's


@process
def test_markdown_as_the_readme_example(server, page):
    # curl -X POST "http://localhost:8000/ocr/markdown?mode=base" -F "file=@document.jpg"
    body = post_file(server, "/ocr/markdown?mode=base", page).json()
    assert set(body) == {"markdown", "mode"} and body["mode"] == "base"
    assert body["markdown"] == runsync_output(server, image=b64(page), task="markdown", mode="base")["markdown"]


@process
def test_configurable_prompt_as_the_readme_example(server, page):
    # curl -X POST "http://localhost:8000/ocr?mode=large&prompt=<image>%0AExtract%20all%20text" -F "file=@document.jpg"
    body = post_file(server, "/ocr?mode=large&prompt=<image>%0AExtract%20all%20text", page).json()
    assert set(body) == {"text", "mode"} and body["mode"] == "large"
    expected = runsync_output(server, image=b64(page), task="custom", prompt="<image>\nExtract all text", mode="large")
    assert body["text"] == expected["text"] and expected["settings"]["prompt"] == "<image>\nExtract all text"
    default = post_file(server, "/ocr?mode=large", page).json()
    assert default["text"] == runsync_output(server, image=b64(page), task="custom", prompt="<image>\nFree OCR. ",
                                             mode="large")["text"]


@process
def test_a_pdf_in_file_gives_its_pages_joined_with_the_separator(server):
    pdf = make_pdf([text_page([f"PDF page {k}"], size=(600, 800)) for k in range(2)])
    body = post_file(server, "/ocr/free?mode=tiny", pdf, name="scan.pdf").json()
    assert body["text"].count(PAGE_SEPARATOR) == 1
    assert body["text"] == runsync_output(server, pdf=b64(pdf), task="ocr", mode="tiny")["text"]


@process
def test_healthz(server):
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"ok": True}


@process
def test_errors_keep_the_worker_codes_and_name_the_field(server, page):
    bad = post_file(server, "/ocr/free", b"\x89PNG\r\n\x1a\nbroken")
    assert bad.status_code == 400 and bad.json()["error_detail"] == {
        "code": "invalid_image", "field": "file", "message": bad.json()["error_detail"]["message"]}
    assert bad.json()["error"].startswith("invalid_image: field 'file'")
    unknown_mode = post_file(server, "/ocr/free?mode=huge", page)
    assert unknown_mode.status_code == 400 and unknown_mode.json()["error_detail"]["field"] == "mode"
    conflict = requests.post(server.url + "/ocr/free?mode=base", files={"file": ("a.png", page)},
                             data={"mode": "tiny"}, timeout=60)
    assert conflict.status_code == 400 and conflict.json()["error_detail"]["field"] == "mode"
    missing = requests.post(server.url + "/ocr/free", data={"mode": "tiny"}, timeout=60)
    assert missing.status_code == 422 and missing.json()["error"].startswith("invalid_input: field 'file'")


@process
def test_request_size_limit_answers_413_in_the_error_shape(server):
    too_big = b"\0" * (MAX_REQUEST_BYTES + 50_000)
    declared = post_file(server, "/ocr/free", too_big)
    assert declared.status_code == 413 and declared.json()["error_detail"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit counts the bytes as they arrive
        for _ in range(10):
            yield b"\0" * 50_000

    chunked = requests.post(server.url + "/v1/chat/completions", data=chunks(), timeout=60,
                            headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"ok": True}


@process
def test_run_then_status_as_against_runpod(server, page):
    submitted = requests.post(server.url + "/run", json={"input": {"image": b64(page), "task": "ocr", "mode": "tiny"}},
                              timeout=60).json()
    assert submitted["status"] in ("IN_QUEUE", "IN_PROGRESS")
    deadline = time.time() + 120
    while True:
        status = requests.get(f"{server.url}/status/{submitted['id']}", timeout=60).json()
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS") or time.time() > deadline:
            break
        time.sleep(0.2)
    assert status["status"] == "COMPLETED" and status["executionTime"] >= 0
    assert status["output"]["text"] == runsync_output(server, image=b64(page), task="ocr", mode="tiny")["text"]
    assert requests.post(f"{server.url}/status/{submitted['id']}", timeout=60).json()["status"] == "COMPLETED"
    streamed = requests.post(f"{server.url}/stream/{submitted['id']}", timeout=60).json()
    assert streamed["status"] == "COMPLETED" and streamed["stream"] == [{"output": status["output"]}]
    assert requests.get(f"{server.url}/stream/{submitted['id']}", timeout=60).json()["stream"] == []  # read once
    failed = server.runsync({"image": b64(b"no image"), "mode": "tiny"})
    assert failed["status"] == "FAILED" and failed["error"].startswith("invalid_image: field 'image'")
    assert requests.get(server.url + "/status/unknown", timeout=10).status_code == 404


@process
def test_concurrent_requests_of_different_doors_share_engine_batches(server, page):
    """Two /runsync jobs and two /ocr/free uploads at once, same mode: a job's page reports a batch
    holding more than one job. Only /runsync shows the pages' batch fields; two of them keep the test
    from hanging on one request that a loaded machine delays past the batch wait."""
    with ThreadPoolExecutor(4) as pool:
        uploads = [pool.submit(post_file, server, "/ocr/free?mode=tiny", page) for _ in range(2)]
        jobs = [pool.submit(server.runsync, {"image": b64(page), "task": "ocr", "mode": "tiny"}) for _ in range(2)]
        timings = [job.result()["output"]["pages"][0]["timings"] for job in jobs]
        assert all(upload.result().status_code == 200 for upload in uploads)
    assert max(t["batch_jobs"] for t in timings) > 1, timings
    assert all(t["batch_size"] >= t["batch_jobs"] for t in timings)


@process
def test_openapi_page_ui_and_cors(server):
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/ocr/free", "/ocr/markdown", "/ocr", "/healthz", "/v1/chat/completions", "/v1/models",
            "/runsync", "/run", "/status/{job_id}"} <= set(schema["paths"])
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    index = requests.get(server.url + "/", timeout=10)
    assert index.status_code == 200 and "<title>OCR</title>" in index.text
    preflight = requests.options(server.url + "/runsync", timeout=10, headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "http://localhost:5173")


@process
def test_with_stream_pages_jobs_stream_their_items_as_runpod_aggregates_them(tiny_checkpoint, page):
    streaming = WorkerServer(tiny_checkpoint, MAX_TOKENS="8", DEFAULT_MODE="tiny", STREAM_PAGES="true")
    try:
        two = {"images": [b64(page), b64(encode(text_page(["Other page"], size=(700, 500)), "PNG"))], "task": "ocr"}
        items = streaming.runsync(two)["output"]
        assert [item["type"] for item in items] == ["page", "page", "document"]
        assert "pages" not in items[2] and items[2]["text"] == PAGE_SEPARATOR.join(i["text"] for i in items[:2])
        job_id = requests.post(streaming.url + "/run", json={"input": two}, timeout=60).json()["id"]
        received, deadline = [], time.time() + 120
        while time.time() < deadline:
            body = requests.get(f"{streaming.url}/stream/{job_id}", timeout=60).json()
            received += [item["output"] for item in body["stream"]]
            if body["status"] == "COMPLETED":
                break
            time.sleep(0.2)
        assert [(i["type"], i["text"]) for i in received] == [(i["type"], i["text"]) for i in items]
        failed = streaming.runsync({"image": b64(b"no image")})
        assert failed["status"] == "FAILED" and failed["error"].startswith("invalid_image")
        chat = streaming.runsync({"openai_route": "/v1/chat/completions", "openai_input": {
            "model": "m", "stream": True, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(page)}},
                {"type": "text", "text": "Free OCR."}]}]}})["output"]
        assert all(isinstance(event, str) and event.startswith("data: ") for event in chat)
        assert chat[-1].endswith("data: [DONE]\n\n") and items[0]["text"] in "".join(chat)
    finally:
        streaming.stop()
