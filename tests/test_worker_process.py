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
