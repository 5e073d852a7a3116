"""runpod's real local API (`--rp_serve_api`) over HTTP, with the tiny checkpoint."""

from __future__ import annotations

import pytest

from tests.helpers import LocalApi, b64, encode, text_page


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
    assert out["usage"]["completion_tokens"] >= 1 and out["finish_reason"] in ("stop", "length")
    assert set(out["pages"][0]["timings"]) >= {"decode_s", "preprocess_s", "generate_s"}
    assert out["model"]["dtype"] == "float32"


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
    body = api.post("/runsync", {"input": {"image": _job()["input"]["image"], "mode": "tiny", "format": "text"}})
    assert body["status"] == "COMPLETED" and isinstance(body["output"]["text"], str)
