"""runpod's real local API (`--rp_serve_api`) over HTTP, with the tiny checkpoint."""

from __future__ import annotations

import pytest

from tests.helpers import LocalApi, b64, encode, text_page

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def api(tiny_checkpoint):
    server = LocalApi(tiny_checkpoint, MAX_TOKENS="8")
    yield server
    server.stop()


def _job(**extra):
    return {"input": {"image": b64(encode(text_page(["Local API"], size=(700, 500)), "PNG")), "mode": "tiny",
                      "task": "ocr", **extra}}


def test_runsync_completes_with_text(api):
    body = api.post("/runsync", _job())
    assert body["status"] == "COMPLETED", body
    out = body["output"]
    assert isinstance(out["text"], str) and out["pages"][0]["settings"]["vision_tokens"] == 145
    page = out["pages"][0]
    assert out["usage"]["completion_tokens"] == page["usage"]["completion_tokens"] >= 1
    assert out["finish_reason"] == page["finish_reason"]
    assert out["finish_reason"] == ("length" if page["usage"]["completion_tokens"] == 8 else "stop")
    assert set(page["timings"]) >= {"decode_s", "queue_s", "preprocess_s", "generate_s", "batch_size", "batch_jobs"}
    assert out["model"] == {**out["model"], "dtype": "float32", "family": "deepseek-ocr-2", "engine": "transformers"}


def test_run_then_status(api):
    submitted = api.post("/run", _job())
    assert submitted["status"] == "IN_PROGRESS"
    body = api.post(f"/status/{submitted['id']}")
    assert body["status"] == "COMPLETED" and "text" in body["output"]


def test_bad_job_fails_with_code_then_next_job_runs(api):
    bad = api.post("/runsync", {"input": {"image": b64(b"definitely not an image"), "mode": "tiny"}})
    assert bad["status"] == "FAILED" and bad["error"].startswith("invalid_image: field 'image'")
    unknown = api.post("/runsync", {"input": {"image": "x", "colour": 1}})
    assert unknown["status"] == "FAILED" and unknown["error"].startswith("invalid_input: field 'colour'")
    good = api.post("/runsync", _job(format="markdown", task="markdown"))
    assert good["status"] == "COMPLETED" and "markdown" in good["output"]


def test_legacy_payload_of_the_old_handler(api):
    """The old DeepSeek-OCR handler's payload: format text -> the Free OCR prompt, text out;
    format markdown -> the grounding prompt, markdown out; a bare prompt -> that prompt."""
    image = _job()["input"]["image"]
    text = api.post("/runsync", {"input": {"image": image, "mode": "tiny", "format": "text"}})["output"]
    assert text["task"] == "ocr" and text["settings"]["prompt"] == "<image>\nFree OCR."
    assert isinstance(text["text"], str) and "markdown" not in text
    md = api.post("/runsync", {"input": {"image": image, "mode": "tiny", "format": "markdown"}})["output"]
    assert md["task"] == "markdown" and "<|grounding|>" in md["settings"]["prompt"] and "text" not in md
    custom = api.post("/runsync", {"input": {"image": image, "mode": "tiny", "prompt": "Extract all text"}})["output"]
    assert custom["task"] == "custom" and custom["settings"]["prompt"] == "<image>\nExtract all text"
