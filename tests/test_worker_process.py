"""The worker as a process, through runpod's own one-job local mode."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import ROOT, b64, encode, run_worker_once, text_page

pytestmark = pytest.mark.process


def _page_b64() -> str:
    return b64(encode(text_page(["Hello worker"], size=(600, 500)), "PNG"))


def test_good_job_prints_and_writes_its_result_as_json(tiny_checkpoint, tmp_path):
    result_file = tmp_path / "out" / "result.json"
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64(), "mode": "tiny", "task": "ocr", "max_tokens": 6},
                           RESULT_FILE=str(result_file), RUNPOD_DEBUG_LEVEL="WARN")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = json.loads(result_file.read_text())
    assert written["pages"][0]["settings"]["vision_tokens"] == 145
    assert written["task"] == "ocr" and written["finish_reason"] in ("stop", "length")
    assert written["usage"]["completion_tokens"] == written["pages"][0]["usage"]["completion_tokens"] > 0
    # runpod prints its banner first; after it, stdout holds the result once, as JSON.
    assert json.loads(proc.stdout[proc.stdout.index("\n{\n") + 1:]) == written
    assert "model: " in proc.stderr and "deepseek-ocr-2 on transformers" in proc.stderr


def test_bad_job_exits_1_with_the_error_code(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64(), "mode": "huge"})
    assert proc.returncode == 1
    assert "invalid_input: field 'mode'" in proc.stdout + proc.stderr


def test_undecodable_image_exits_1_with_invalid_image(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": b64(b"\x89PNG\r\n\x1a\nbroken"), "mode": "tiny"})
    assert proc.returncode == 1
    assert "invalid_image: field 'image'" in proc.stdout + proc.stderr


def test_repository_test_input_json_runs(tiny_checkpoint, tmp_path):
    shutil.copy(ROOT / "test_input.json", tmp_path / "test_input.json")
    proc = run_worker_once(tiny_checkpoint, None, cwd=tmp_path, MAX_TOKENS="4", RESULT_FILE=str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["task"] == "markdown" and result["page_count"] == 1


def test_missing_weights_stop_the_start_with_the_path(tmp_path):
    proc = run_worker_once(tmp_path / "no-model", {"image": _page_b64()})
    assert proc.returncode == 2
    assert f"MODEL_PATH={tmp_path / 'no-model'}" in proc.stderr and "download_model.py" in proc.stderr


def test_invalid_setting_stops_the_start_with_its_name(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64()}, BATCH_SIZE="many")
    assert proc.returncode == 2 and "BATCH_SIZE" in proc.stderr


def test_an_invalid_manifest_stops_the_start(tiny_checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (model / "manifest.json").write_text("{not json")
    proc = run_worker_once(model, {"image": _page_b64()})
    assert proc.returncode == 2 and "manifest" in proc.stderr


def _post_in_thread(url: str, body: dict):
    import threading

    import requests

    box = {}

    def post():
        box["response"] = requests.post(url, json=body, timeout=300).json()

    thread = threading.Thread(target=post)
    thread.start()
    return thread, box


@pytest.mark.parametrize("grace, expected", [("1", "FAILED"), ("120", "COMPLETED")])
def test_sigterm_lets_jobs_in_flight_finish_within_the_grace_or_fail_them_clearly(tiny_checkpoint, grace, expected):
    """RunPod scales a worker down with SIGTERM: the job in flight finishes if it can within
    SHUTDOWN_GRACE_S, else it ends with worker_shutting_down; it is never silently lost."""
    import signal
    import time

    from tests.helpers import LocalApi, make_pdf

    api = LocalApi(tiny_checkpoint, MAX_TOKENS="24", RUNAWAY_RETRY="false", SHUTDOWN_GRACE_S=grace,
                   MAX_JOB_INFLIGHT_PAGES="2")
    try:
        pages = 40  # long enough to be running when the signal comes; short enough for a 120 s grace
        pdf = make_pdf([text_page([f"page {i}"], size=(500, 400)) for i in range(pages)])
        thread, box = _post_in_thread(api.url + "/runsync", {"input": {"pdf": b64(pdf), "mode": "tiny", "task": "ocr",
                                                                       "ngram_size": 0}})
        time.sleep(3)  # the job is running (a 40-page job takes far longer than this)
        assert thread.is_alive(), "the job ended before the signal; the test proves nothing"
        api.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=240)
        body = box["response"]
        assert body["status"] == expected, body
        if expected == "FAILED":
            assert body["error"].startswith("worker_shutting_down:")
        else:
            assert body["output"]["page_count"] == pages
        api.proc.wait(timeout=60)
    finally:
        api.stop()


def test_the_quick_start_main_job_says_what_ran_and_adds_no_warning_of_its_own(tmp_path):
    """`./scripts/run-local.sh` without MODEL_PATH: the result names the tiny random checkpoint, the page
    ends on its own (no max_tokens cap from the script, so no runaway warning or retry), and the result
    is printed once as JSON and written to RESULT_FILE."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "MAX_TOKENS") and not k.startswith("RUNPOD_")}
    env["RESULT_FILE"] = str(tmp_path / "result.json")
    proc = subprocess.run([str(ROOT / "scripts" / "run-local.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert "tiny-random" in result["model"]["name"] and "noise" in result["model"]["name"]
    assert "TINY RANDOM" in proc.stderr
    page = result["pages"][0]
    assert page["finish_reason"] == "stop" and page["retried"] is False
    assert "runaway_generation" not in {w["code"] for w in page["warnings"]}
    assert json.loads(proc.stdout[proc.stdout.index("\n{\n") + 1:]) == result
    assert proc.stdout.count('"type": "document"') == 1, "the result is printed once"
